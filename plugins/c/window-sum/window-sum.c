/*
 * Window count and sum, the C twin of plugins/window-sum (Rust).
 *
 * A window aggregate (world `window-operator`, which `eddy build` picks for
 * a source that uses EDDY_EXPORT_WINDOW): per key and window, the number of events and
 * the sum of a numeric field (config `field`, default `amount`; a missing
 * field counts as 0, one that is not a number fails the event), emitted as
 * {"start": .., "end": .., "count": .., "sum": ..}. The pipeline file
 * declares the windows; the output is the Rust aggregate's, byte for byte.
 */
#include "eddy.h"

/* A window's accumulator, stored by the host as {"count":..,"sum":..}. */
typedef struct {
  uint64_t count;
  double sum;
} totals;

static char *field = NULL; /* the summed field's name */

static eddy_error ws_init(const eddy_config *config) {
  eddy_error e = eddy_config_string(config, "field", &field);
  if (!e && !field) {
    field = strdup("amount");
    if (!field) abort();
  }
  return e;
}

static void ws_create(totals *acc) { *acc = (totals){0, 0.0}; }

/* Whether JSON text `s` is an object (its first non-space byte is `{`). */
static bool is_object(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i < n && s[i] == '{';
}

static eddy_error ws_add(totals *acc, const eddy_window_event *event) {
  eddy_json j;
  eddy_json_value v;
  eddy_error e = NULL;
  double amount = 0.0;
  int r = eddy_json_field(&j, event->value, event->value_len, field, &v);
  if (r < 0) {
    e = eddy_json_error(&j, "cannot read the payload: ");
  } else if (r == 0 && !is_object(event->value, event->value_len)) {
    e = eddy_errorf("cannot read the payload: it is not a JSON object");
  } else if (r == 1 && !eddy_json_f64(&v, &amount)) {
    eddy_buf text = {0};
    eddy_buf_append(&text, event->value + v.start, v.end - v.start);
    e = eddy_errorf("cannot read the payload: field `%s` is %s, not a number", field, (char *)text.ptr);
    eddy_buf_free(&text);
  }
  eddy_json_free(&j);
  if (e) return e;
  acc->count += 1;
  acc->sum += amount;
  return NULL;
}

static eddy_error ws_merge(totals *into, const totals *other) {
  into->count += other->count;
  into->sum += other->sum;
  return NULL;
}

static eddy_error ws_finish(const eddy_window *w, const totals *acc, eddy_buf *out) {
  eddy_jw_begin(out);
  eddy_jw_i64(out, "start", w->start);
  eddy_jw_i64(out, "end", w->end);
  eddy_jw_u64(out, "count", acc->count);
  eddy_jw_f64(out, "sum", acc->sum);
  eddy_jw_end(out);
  return NULL;
}

static eddy_error ws_decode(totals *acc, const uint8_t *json, size_t len) {
  eddy_json j;
  eddy_json_value k, v;
  eddy_error e = NULL;
  int r;
  *acc = (totals){0, 0.0};
  eddy_json_init(&j, json, len);
  if (!eddy_json_object_begin(&j)) {
    e = eddy_errorf("not a JSON object");
  } else {
    while ((r = eddy_json_object_next(&j, &k, &v)) == 1) {
      if (eddy_json_string_is(&j, &k, "count") && v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64) {
        acc->count = v.u;
      } else if (eddy_json_string_is(&j, &k, "sum") && v.kind == EDDY_JSON_NUMBER) {
        acc->sum = v.f;
      }
    }
    if (r < 0) e = eddy_json_error(&j, "");
  }
  eddy_json_free(&j);
  return e;
}

static void ws_encode(const totals *acc, eddy_buf *out) {
  eddy_jw_begin(out);
  eddy_jw_u64(out, "count", acc->count);
  eddy_jw_f64(out, "sum", acc->sum);
  eddy_jw_end(out);
}

EDDY_EXPORT_WINDOW(totals, ws_init, ws_create, ws_add, ws_merge, ws_finish, ws_decode, ws_encode)
