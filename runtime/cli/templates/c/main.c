/*
 * {{name}}: for every event, the key's running count of events and the sum
 * of their `amount` (0 when absent), emitted as {"count": .., "sum": ..}
 * keyed like the input. An `amount` that is not a number dead-letters the
 * event.
 */
#include "eddy.h"

/* Once per instance, with the pipeline's `config` for this operator. */
static eddy_error op_init(const eddy_config *config) {
  (void)config;
  return NULL;
}

/* The payload's `amount`: 0 when missing; an error when not a number. */
static eddy_error amount_of(const eddy_event *ev, double *amount) {
  eddy_json j;
  eddy_json_value k, v;
  eddy_error e = NULL;
  int r = 0;
  *amount = 0;
  eddy_json_init(&j, ev->value, ev->value_len);
  if (!eddy_json_object_begin(&j)) {
    if (eddy_json_next_value(&j, &v)) eddy_json_invalid_type(&j, &v, "a JSON object");
    r = -1;
  }
  while (r >= 0 && (r = eddy_json_object_next(&j, &k, &v)) == 1) {
    if (!eddy_json_string_is(&j, &k, "amount")) continue;
    if (v.kind != EDDY_JSON_NUMBER) {
      eddy_json_invalid_type(&j, &v, "f64");
      r = -1;
    } else {
      *amount = v.f;
    }
  }
  if (r < 0) e = eddy_json_error(&j, "");
  eddy_json_free(&j);
  return e;
}

/* State `totals` ({"count": u64, "sum": f64}); zeros when missing. */
static eddy_error read_totals(uint64_t *count, double *sum) {
  eddy_buf b = {0};
  *count = 0;
  *sum = 0;
  if (!eddy_get("totals", &b)) return NULL;
  eddy_json j;
  eddy_json_value k, v;
  int r = -1;
  eddy_json_init(&j, b.ptr, b.len);
  if (eddy_json_object_begin(&j)) {
    while ((r = eddy_json_object_next(&j, &k, &v)) == 1) {
      if (eddy_json_string_is(&j, &k, "count") && v.kind == EDDY_JSON_NUMBER) *count = v.u;
      if (eddy_json_string_is(&j, &k, "sum") && v.kind == EDDY_JSON_NUMBER) *sum = v.f;
    }
  }
  eddy_error e = r == 0 ? NULL : eddy_errorf("state totals does not decode");
  eddy_json_free(&j);
  eddy_buf_free(&b);
  return e;
}

/* Once per event; the state calls act on the event's key. */
static eddy_error op_handle(const eddy_event *ev) {
  double amount;
  uint64_t count;
  double sum;
  eddy_error e = amount_of(ev, &amount);
  if (!e) e = read_totals(&count, &sum);
  if (e) return e;
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

EDDY_EXPORT_OPERATOR(op_init, op_handle)
