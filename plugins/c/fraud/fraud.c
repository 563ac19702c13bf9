/*
 * Card fraud alerts over a sliding window of event time, in C.
 *
 * Per card (the key), keeps the card's transactions of the last `window_ms`
 * milliseconds and emits an alert when the window's total spend exceeds
 * `max_spend` (reason "spend") or its number of transactions exceeds
 * `max_count` (reason "velocity"). Transactions inside the limits emit
 * nothing. The same operator as plugins/fraud (Rust; its README.md has the
 * exact shapes), with the same state: list `window` of {"ts": i64,
 * "amount": f64}, oldest first, and value `total_spend` (f64).
 */
#include "eddy.h"

static struct {
  int64_t window_ms;
  double max_spend;
  uint32_t max_count;
} settings = {60000, 1000.0, 5};

/* ---- config ---------------------------------------------------------------
 * Like serde's `#[serde(default, deny_unknown_fields)]` on the Rust side:
 * fields are checked in sorted order (serde_json's map order), the last of a
 * repeated field counts, unknown ones are refused. */

static eddy_error config_field(eddy_json *j, const char *name, const eddy_json_value *v) {
  eddy_error e = NULL;
  eddy_buf d = {0};
  if (v->kind == EDDY_JSON_NUMBER && !strcmp(name, "max_spend")) {
    settings.max_spend = v->f;
  } else if (v->kind == EDDY_JSON_NUMBER && v->num != EDDY_NUM_F64 && !strcmp(name, "window_ms")) {
    if (v->num == EDDY_NUM_U64 && v->u > INT64_MAX)
      e = eddy_errorf("invalid config: invalid value: integer `%llu`, expected i64", (unsigned long long)v->u);
    else
      settings.window_ms = v->num == EDDY_NUM_U64 ? (int64_t)v->u : v->i;
  } else if (v->kind == EDDY_JSON_NUMBER && v->num != EDDY_NUM_F64 && !strcmp(name, "max_count")) {
    if (v->num == EDDY_NUM_U64 && v->u <= UINT32_MAX) {
      settings.max_count = (uint32_t)v->u;
    } else {
      eddy_json_describe(j, v, &d);
      e = eddy_errorf("invalid config: invalid value: %s, expected u32", (char *)d.ptr);
    }
  } else if (!strcmp(name, "window_ms") || !strcmp(name, "max_spend") || !strcmp(name, "max_count")) {
    eddy_json_describe(j, v, &d);
    e = eddy_errorf("invalid config: invalid type: %s, expected %s", (char *)d.ptr,
                    name[4] == 's' ? "f64" : name[4] == 'c' ? "u32" : "i64");
  } else {
    e = eddy_errorf("invalid config: unknown field `%s`, expected one of `window_ms`, `max_spend`, `max_count`", name);
  }
  eddy_buf_free(&d);
  return e;
}

typedef struct {
  char *name;
  eddy_json_value value;
} member;

static int by_name(const void *a, const void *b) {
  return strcmp(((const member *)a)->name, ((const member *)b)->name);
}

static eddy_error fraud_init(const eddy_config *config) {
  eddy_json j;
  eddy_json_value k, v;
  member *m = NULL;
  size_t n = 0;
  int r;
  eddy_error e = NULL;
  eddy_json_init(&j, config->json, config->len);
  if (!eddy_json_object_begin(&j)) {
    eddy_buf d = {0};
    eddy_json_next_value(&j, &v);
    eddy_json_describe(&j, &v, &d);
    e = eddy_errorf("invalid config: invalid type: %s, expected struct Settings", (char *)d.ptr);
    eddy_buf_free(&d);
  }
  while (!e && (r = eddy_json_object_next(&j, &k, &v)) == 1) {
    eddy_buf name = {0};
    eddy_json_string(&j, &k, &name);
    eddy_buf_putc(&name, 0);
    size_t at = 0;
    while (at < n && strcmp(m[at].name, (char *)name.ptr)) at++;
    if (at < n) { /* repeated: the last one counts */
      free(m[at].name);
    } else {
      m = realloc(m, ++n * sizeof *m);
      if (!m) abort();
    }
    m[at] = (member){(char *)name.ptr, v};
  }
  qsort(m, n, sizeof *m, by_name);
  for (size_t i = 0; i < n; i++) {
    if (!e) e = config_field(&j, m[i].name, &m[i].value);
    free(m[i].name);
  }
  free(m);
  eddy_json_free(&j);
  if (e) return e;
  if (settings.window_ms <= 0) return eddy_errorf("window_ms must be positive");
  if (settings.max_spend < 0.0) return eddy_errorf("max_spend must be zero or more");
  return NULL;
}

/* ---- the transaction --------------------------------------------------------
 * {"card": string, "amount": number, "ts": integer or null or missing}; other
 * fields are ignored. Errors are worded and positioned as serde_json words
 * them for the Rust operator's `Transaction`. */

typedef struct {
  eddy_buf card;
  double amount;
  bool has_ts;
  int64_t ts;
} transaction;

static bool read_transaction(eddy_json *j, transaction *t) {
  eddy_json_value k, v;
  bool card = false, amount = false, ts = false;
  int r;
  if (!eddy_json_object_begin(j)) {
    if (eddy_json_next_value(j, &v)) eddy_json_invalid_type(j, &v, "struct Transaction");
    return false;
  }
  while ((r = eddy_json_object_next(j, &k, &v)) == 1) {
    const char *name = eddy_json_string_is(j, &k, "card")     ? "card"
                       : eddy_json_string_is(j, &k, "amount") ? "amount"
                       : eddy_json_string_is(j, &k, "ts")     ? "ts"
                                                              : NULL;
    if (!name) continue;
    bool *seen = name[0] == 'c' ? &card : name[0] == 'a' ? &amount : &ts;
    if (*seen) {
      size_t at = k.end;
      while (at < j->len && strchr(" \t\n\r", j->s[at])) at++;
      eddy_json_fail(j, at, "duplicate field `%s`", name);
      return false;
    }
    *seen = true;
    if (v.kind == EDDY_JSON_NUMBER && v.out_of_range) {
      eddy_json_fail(j, v.end, "number out of range");
      return false;
    }
    if (name[0] == 'c') {
      if (v.kind != EDDY_JSON_STRING) return eddy_json_invalid_type(j, &v, "a string"), false;
      eddy_json_string(j, &v, &t->card);
      eddy_buf_putc(&t->card, 0);
      t->card.len--;
    } else if (name[0] == 'a') {
      if (!eddy_json_f64(&v, &t->amount)) return eddy_json_invalid_type(j, &v, "f64"), false;
    } else if (v.kind == EDDY_JSON_NULL) {
      t->has_ts = false;
    } else if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_I64) {
      t->has_ts = true, t->ts = v.i;
    } else if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64 && v.u <= INT64_MAX) {
      t->has_ts = true, t->ts = (int64_t)v.u;
    } else if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64) {
      eddy_json_fail(j, v.end, "invalid value: integer `%llu`, expected i64", (unsigned long long)v.u);
      return false;
    } else {
      return eddy_json_invalid_type(j, &v, "i64"), false;
    }
  }
  if (r < 0) return false;
  if (!card || !amount) {
    eddy_json_fail(j, j->pos, "missing field `%s`", card ? "amount" : "card");
    return false;
  }
  return eddy_json_end(j);
}

/* ---- state ------------------------------------------------------------------ */

/* Reads state value `total_spend` (an f64); 0 when missing. */
static eddy_error read_total_spend(double *total) {
  eddy_buf b = {0};
  eddy_error e = NULL;
  *total = 0;
  if (eddy_get("total_spend", &b)) {
    eddy_json j;
    eddy_json_value v;
    eddy_json_init(&j, b.ptr, b.len);
    if (!eddy_json_next_value(&j, &v) || !eddy_json_end(&j) || !eddy_json_f64(&v, total))
      e = eddy_errorf("state total_spend does not decode: %s", (char *)b.ptr);
    eddy_json_free(&j);
  }
  eddy_buf_free(&b);
  return e;
}

/* Decodes a window entry {"ts": i64, "amount": f64}. */
static bool read_entry(const uint8_t *bytes, size_t len, int64_t *ts, double *amount) {
  eddy_json j;
  eddy_json_value k, v;
  int r = -1, seen = 0;
  eddy_json_init(&j, bytes, len);
  if (eddy_json_object_begin(&j)) {
    while ((r = eddy_json_object_next(&j, &k, &v)) == 1) {
      if (eddy_json_string_is(&j, &k, "ts") && v.kind == EDDY_JSON_NUMBER && v.num != EDDY_NUM_F64 &&
          (v.num == EDDY_NUM_I64 || v.u <= INT64_MAX)) {
        *ts = v.num == EDDY_NUM_I64 ? v.i : (int64_t)v.u, seen |= 1;
      } else if (eddy_json_string_is(&j, &k, "amount") && v.kind == EDDY_JSON_NUMBER) {
        *amount = v.f, seen |= 2;
      }
    }
  }
  eddy_json_free(&j);
  return r == 0 && seen == 3;
}

/* Rounds an amount to cents, so sums print as 1034.5, not 1034.4999999. */
static double cents(double amount) { return round(amount * 100.0) / 100.0; }

static eddy_error fraud_handle(const eddy_event *ev) {
  transaction txn = {0};
  eddy_json j;
  eddy_error e = NULL;
  eddy_buf out = {0};
  eddy_items items = {0};

  eddy_json_init(&j, ev->value, ev->value_len);
  bool ok = read_transaction(&j, &txn);
  if (!ok) e = eddy_json_error(&j, "payload is not the expected JSON: ");
  eddy_json_free(&j);
  if (e) goto done;

  int64_t ts = ev->has_time ? ev->time : txn.ts;
  if (!ev->has_time && !txn.has_ts) {
    e = eddy_errorf("transaction of card %s has no time: no pipeline time and no `ts` field", (char *)txn.card.ptr);
    goto done;
  }

  double total_spend;
  if ((e = read_total_spend(&total_spend))) goto done;
  total_spend += txn.amount;
  eddy_json_write_f64(&out, total_spend);
  eddy_set("total_spend", out.ptr, out.len);

  eddy_buf_clear(&out);
  eddy_jw_begin(&out);
  eddy_jw_i64(&out, "ts", ts);
  eddy_jw_f64(&out, "amount", txn.amount);
  eddy_jw_end(&out);
  eddy_list_push("window", out.ptr, out.len);

  /* The list is append-only, so drop the oldest entries that fell out of
   * the window. A late (out-of-order) transaction can leave an old entry
   * behind newer ones; the filter below skips it and a later trim drops it. */
  eddy_list_range("window", 0, UINT32_MAX, &items);
  int64_t start;
  if (__builtin_sub_overflow(ts, settings.window_ms, &start)) start = INT64_MIN;
  size_t stale = 0;
  bool counting_stale = true;
  uint32_t window_count = 0;
  double window_spend = 0.0;
  for (size_t i = 0; i < items.len; i++) {
    int64_t ets;
    double amount;
    if (!read_entry(items.ptr[i].ptr, items.ptr[i].len, &ets, &amount)) {
      e = eddy_errorf("state window does not decode: %.*s", (int)items.ptr[i].len, (char *)items.ptr[i].ptr);
      goto done;
    }
    if (counting_stale && ets < start) {
      stale++;
      continue;
    }
    counting_stale = false;
    if (ets >= start && ets <= ts) window_count++, window_spend += amount;
  }
  eddy_list_trim("window", (uint32_t)(items.len - stale));

  const char *reason;
  if (window_spend > settings.max_spend) {
    reason = "spend";
  } else if (window_count > settings.max_count) {
    reason = "velocity";
  } else {
    goto done;
  }
  eddy_buf_clear(&out);
  eddy_jw_begin(&out);
  eddy_jw_str(&out, "card", (char *)txn.card.ptr, txn.card.len);
  eddy_jw_cstr(&out, "reason", reason);
  eddy_jw_f64(&out, "window_spend", cents(window_spend));
  eddy_jw_u64(&out, "window_count", window_count);
  eddy_jw_f64(&out, "total_spend", cents(total_spend));
  eddy_jw_i64(&out, "ts", ts);
  eddy_jw_end(&out);
  eddy_emit(ev->key, ev->key_len, out.ptr, out.len);

done:
  eddy_items_free(&items);
  eddy_buf_free(&out);
  eddy_buf_free(&txn.card);
  return e;
}

EDDY_EXPORT_OPERATOR(fraud_init, fraud_handle)
