/*
 * Keyed counter, in C: for every event, the key's running count and the sum
 * of its `amount` field.
 *
 * Emits {"count": <events so far>, "sum": <sum so far>} keyed like the
 * input. An event without `amount` counts with 0; one whose `amount` is not
 * a number is refused (dead-lettered) and leaves the totals unchanged. The
 * same operator as plugins/counter (Rust), with the same state: one value
 * `totals` holding {"count": u64, "sum": f64}.
 */
#include "eddy.h"

static eddy_error counter_init(const eddy_config *config) {
  (void)config; /* no settings */
  return NULL;
}

/* The payload's top-level `amount`: 0 when missing; an error (with serde's
 * wording) when it is not a number, repeated, or the payload is not an
 * object. */
static eddy_error amount_of(const eddy_event *ev, double *amount) {
  eddy_json j;
  eddy_json_value k, v;
  eddy_error e = NULL;
  int r = 0, seen = 0;
  *amount = 0;
  eddy_json_init(&j, ev->value, ev->value_len);
  if (!eddy_json_object_begin(&j)) {
    if (eddy_json_next_value(&j, &v)) eddy_json_invalid_type(&j, &v, "a JSON object");
    r = -1;
  }
  while (r >= 0 && (r = eddy_json_object_next(&j, &k, &v)) == 1) {
    if (!eddy_json_string_is(&j, &k, "amount")) continue;
    if (seen++) {
      eddy_json_fail(&j, v.start, "duplicate field `amount`");
      r = -1;
    } else if (v.kind != EDDY_JSON_NUMBER) {
      eddy_json_invalid_type(&j, &v, "f64");
      r = -1;
    } else if (v.out_of_range) {
      eddy_json_fail(&j, v.end, "number out of range");
      r = -1;
    } else {
      *amount = v.f;
    }
  }
  if (r < 0) e = eddy_json_error(&j, "");
  eddy_json_free(&j);
  return e;
}

/* Reads state `totals` ({"count": u64, "sum": f64}); zeros when missing. */
static eddy_error read_totals(uint64_t *count, double *sum) {
  eddy_buf b = {0};
  *count = 0;
  *sum = 0;
  if (!eddy_get("totals", &b)) return NULL;
  eddy_json j;
  eddy_json_value k, v;
  int r = -1, seen = 0;
  eddy_json_init(&j, b.ptr, b.len);
  if (eddy_json_object_begin(&j)) {
    while ((r = eddy_json_object_next(&j, &k, &v)) == 1) {
      if (eddy_json_string_is(&j, &k, "count") && v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64) {
        *count = v.u, seen |= 1;
      } else if (eddy_json_string_is(&j, &k, "sum") && v.kind == EDDY_JSON_NUMBER) {
        *sum = v.f, seen |= 2;
      }
    }
  }
  eddy_error e = NULL;
  if (r != 0 || seen != 3) e = eddy_errorf("state totals does not decode: %s", (char *)b.ptr);
  eddy_json_free(&j);
  eddy_buf_free(&b);
  return e;
}

static eddy_error counter_handle(const eddy_event *ev) {
  double amount;
  eddy_error e = amount_of(ev, &amount);
  if (e) return e;
  uint64_t count;
  double sum;
  if ((e = read_totals(&count, &sum))) return e;
  count += 1;
  sum += amount;

  eddy_buf out = {0};
  eddy_jw_begin(&out);
  eddy_jw_u64(&out, "count", count);
  eddy_jw_f64(&out, "sum", sum);
  eddy_jw_end(&out);
  eddy_set("totals", out.ptr, out.len);
  eddy_emit(ev->key, ev->key_len, out.ptr, out.len);
  eddy_buf_free(&out);
  return NULL;
}

EDDY_EXPORT_OPERATOR(counter_init, counter_handle)
