/*
 * eddy.h: write Eddy stream operators in C.
 *
 * A thin layer over the raw bindings that `eddy build` generates from the
 * contract (wit/world.wit, header "operator.h" whatever the world); the C
 * counterpart of the Rust SDK (sdk/rust/src/lib.rs). Header only: include it, and
 * export your operator from exactly one source file with
 *
 *     EDDY_EXPORT_OPERATOR(my_init, my_handle)
 *
 * where
 *
 *     eddy_error my_init(const eddy_config *config);    // once, before any event
 *     eddy_error my_handle(const eddy_event *event);    // once per event
 *
 * return NULL for success or an error made with eddy_errorf(). An error from
 * `init` stops the pipeline before it reads input; an error from `handle`
 * discards the event's state writes and emits and dead-letters the event.
 *
 * Built for a world with `handle-batch` (`eddy build`'s default,
 * `batched-timer-operator`, which defines EDDY_HANDLE_BATCH), the macro
 * exports it too: it runs `my_handle` on each event of a batch, with state
 * and emits served and buffered here (see "the batched fast path" below).
 *
 * Timers: `eddy_timer_set("delay", at)` sets event-time timer `delay` of the
 * current key (a name holds one pending time; setting it again replaces
 * it). Once the watermark is past `at` (or a file input ended), the host
 * calls the timer handler, which you define (in any one source file) as
 *
 *     eddy_error eddy_on_timer(const eddy_timer *timer);  // key, name, at
 *
 * Built for a world with `on-timer` (`eddy build`'s default, which defines
 * EDDY_ON_TIMER), EDDY_EXPORT_OPERATOR exports it; an operator that defines
 * no `eddy_on_timer` answers a timer with an error naming it.
 *
 * Contents:
 *   - errors and byte buffers     eddy_errorf, eddy_buf_*
 *   - state of the current key    eddy_get/set/delete, eddy_map_*, eddy_list_*,
 *                                 eddy_clear
 *   - output and log              eddy_emit, eddy_log
 *   - timers and the watermark    eddy_timer_set/clear/get, eddy_timers_list,
 *                                 eddy_watermark, eddy_event_late,
 *                                 eddy_on_timer (yours)
 *   - config                      eddy_config_string/_f64/_i64
 *   - JSON reading                eddy_json_* (a cursor over JSON text that
 *                                 parses numbers exactly as serde_json does)
 *   - JSON writing                eddy_jw_* (objects with string, integer and
 *                                 f64 fields, printed byte-for-byte as
 *                                 serde_json prints them)
 *   - window aggregates           EDDY_EXPORT_WINDOW (world window-operator:
 *                                 create / add / merge / finish over your
 *                                 accumulator; see "window aggregates")
 *
 * State is bytes; store JSON (as the Rust SDK does) so operators in other
 * languages can read it. State calls trap outside `handle`.
 */
#ifndef EDDY_H
#define EDDY_H

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "operator.h"

/* ---- errors ------------------------------------------------------------- */

/* An operator error: NULL for success, else a malloc'd message. */
typedef char *eddy_error;

/* An error with a printf-style message. */
__attribute__((format(printf, 1, 2))) static inline eddy_error eddy_errorf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *msg = malloc((size_t)(n > 0 ? n : 0) + 1);
  if (!msg) abort();
  va_start(ap, fmt);
  vsnprintf(msg, (size_t)(n > 0 ? n : 0) + 1, fmt, ap);
  va_end(ap);
  return msg;
}

/* ---- byte buffers ------------------------------------------------------- */

/* A growable byte buffer; start with `eddy_buf b = {0};`, end with
 * eddy_buf_free. `ptr` is always NUL-terminated once anything was added. */
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} eddy_buf;

static inline void eddy_buf_reserve(eddy_buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap * 2 : 64;
  while (cap < b->len + extra + 1) cap *= 2;
  b->ptr = realloc(b->ptr, cap);
  if (!b->ptr) abort();
  b->cap = cap;
}
static inline void eddy_buf_append(eddy_buf *b, const void *data, size_t n) {
  eddy_buf_reserve(b, n);
  if (n) memcpy(b->ptr + b->len, data, n);
  b->len += n;
  b->ptr[b->len] = 0;
}
static inline void eddy_buf_putc(eddy_buf *b, char c) { eddy_buf_append(b, &c, 1); }
static inline void eddy_buf_puts(eddy_buf *b, const char *s) { eddy_buf_append(b, s, strlen(s)); }
static inline void eddy_buf_clear(eddy_buf *b) {
  b->len = 0;
  if (b->ptr) b->ptr[0] = 0;
}
static inline void eddy_buf_free(eddy_buf *b) {
  free(b->ptr);
  b->ptr = NULL;
  b->len = b->cap = 0;
}

/* ---- events and config -------------------------------------------------- */

/* The event being handled. `key` and `value` are NUL-terminated (the
 * terminator is not counted in the lengths) and live until `handle` returns. */
typedef struct {
  const char *key;      /* routing key; state calls act on this key */
  size_t key_len;
  const uint8_t *value; /* payload: the JSON input line or the previous emit */
  size_t value_len;
  bool has_time;        /* event time from the pipeline's `time` field */
  int64_t time;
} eddy_event;

/* The operator's `config` table from the pipeline, as JSON text (NUL-
 * terminated; "{}" when the pipeline gives none). */
typedef struct {
  const char *json;
  size_t len;
} eddy_config;

/* ---- the batched fast path: state ----------------------------------------
 *
 * With `handle-batch` (eddy build defines EDDY_HANDLE_BATCH when the world
 * has it), the host hands the operator many events at once with the single
 * values of their keys, and EDDY_EXPORT_OPERATOR's `handle-batch` runs your
 * handler on each. While it runs, the state and emit functions below are
 * served here instead of by the host: eddy_get reads the batch's values
 * (with the writes of earlier events of the batch), eddy_set / eddy_delete
 * and eddy_emit are buffered per event and kept when the handler returns
 * NULL, dropped when it returns an error. A map, list or eddy_clear call
 * marks the event for the per-event path (it gets no data here: eddy_map_get
 * finds nothing, lengths are 0), and the host then handles it again, and the
 * rest, with `handle`. Your code is the same either way.
 *
 * The state lives in one global, `eddy__B`, that every source file of the
 * operator shares.
 */

/* A growable list of u32 (a `list<u32>` column of the result). */
typedef struct {
  uint32_t *ptr;
  size_t len, cap;
} eddy__u32s;

static inline void eddy__u32s_push(eddy__u32s *l, uint32_t v) {
  if (l->len == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->ptr = realloc(l->ptr, l->cap * sizeof *l->ptr);
    if (!l->ptr) abort();
  }
  l->ptr[l->len++] = v;
}

/* A `strings` column of the result being built: bytes and end offsets. */
typedef struct {
  eddy_buf bytes;
  eddy__u32s ends;
} eddy__strings;

static inline void eddy__strings_push(eddy__strings *s, const void *p, size_t n) {
  eddy_buf_append(&s->bytes, p, n);
  eddy__u32s_push(&s->ends, (uint32_t)s->bytes.len);
}
/* Drops the strings from index `count` on. */
static inline void eddy__strings_truncate(eddy__strings *s, size_t count) {
  s->ends.len = count;
  s->bytes.len = count ? s->ends.ptr[count - 1] : 0;
}

#ifndef EDDY_WINDOW
/* One single value of a key in the batch: its name (an index in
 * `eddy__B.names`) and where its bytes are. */
enum { EDDY__DELETED, EDDY__INPUT, EDDY__ARENA };
typedef struct {
  uint32_t name;
  uint8_t where; /* EDDY__DELETED, or EDDY__INPUT (`value-bytes` of the
                    batch) / EDDY__ARENA (written in the batch) at off..+len */
  uint32_t off, len;
} eddy__entry;

typedef struct {
  eddy__entry *e;
  uint32_t n, cap;
} eddy__values;

typedef struct {
  uint32_t slot; /* in the current key's values */
  eddy__entry old;
  bool added;
} eddy__undo;

typedef struct {
  bool active; /* a batch is running */
  bool stop;   /* the current event needs the per-event path */
  const uint8_t *input; /* the batch's `value-bytes` */
  eddy_buf arena;       /* values written during the batch */
  eddy__values *keys;   /* per key of the batch: its values */
  size_t nkeys, keys_cap;
  uint32_t current;     /* key index of the event being handled */
  const char *key;      /* and the key (NUL-terminated), for emits */
  size_t key_len;
  /* Value names seen, for the life of the instance (the host bounds
   * them: at most 1,024 per operator). */
  struct {
    char *s;
    uint32_t len;
  } *names;
  uint32_t nnames, names_cap;
  eddy__undo *undo;     /* the current event's writes, to undo */
  size_t nundo, undo_cap;
  eddy__u32s touched;   /* value slots the current event wrote */
  /* The result's columns, reused from batch to batch. */
  eddy__u32s emit_counts, write_counts, deletes, failed;
  eddy__strings emit_keys, emit_payloads, write_names, write_values, reasons;
  eddy_buf scratch;     /* the event's payload, NUL-terminated */
  eddy_buf key_text;    /* the batch's keys, NUL-terminated */
  eddy__u32s key_at;    /* where each key starts in key_text */
} eddy__batch;

/* Weak, so that every source file may include eddy.h: they share one. */
__attribute__((weak)) eddy__batch eddy__B;

/* The index of value name `s` (`n` bytes), added when new. */
static inline uint32_t eddy__name(const void *s, size_t n) {
  eddy__batch *B = &eddy__B;
  for (uint32_t i = 0; i < B->nnames; i++) {
    if (B->names[i].len == n && !memcmp(B->names[i].s, s, n)) return i;
  }
  if (B->nnames == B->names_cap) {
    B->names_cap = B->names_cap ? B->names_cap * 2 : 8;
    B->names = realloc(B->names, B->names_cap * sizeof *B->names);
    if (!B->names) abort();
  }
  char *copy = malloc(n + 1);
  if (!copy) abort();
  memcpy(copy, s, n);
  copy[n] = 0;
  B->names[B->nnames].s = copy;
  B->names[B->nnames].len = (uint32_t)n;
  return B->nnames++;
}

/* The slot of value `name` in the current key's values, or -1. */
static inline int64_t eddy__slot(const char *name) {
  eddy__batch *B = &eddy__B;
  size_t n = strlen(name);
  eddy__values *v = &B->keys[B->current];
  for (uint32_t i = 0; i < v->n; i++) {
    const char *s = B->names[v->e[i].name].s;
    if (B->names[v->e[i].name].len == n && !memcmp(s, name, n)) return i;
  }
  return -1;
}

static inline bool eddy__batch_get(const char *name, eddy_buf *out) {
  eddy__batch *B = &eddy__B;
  int64_t i = eddy__slot(name);
  eddy_buf_clear(out);
  if (i < 0) return false;
  eddy__entry e = B->keys[B->current].e[i];
  if (e.where == EDDY__DELETED) return false;
  const uint8_t *base = e.where == EDDY__INPUT ? B->input : B->arena.ptr;
  eddy_buf_append(out, base + e.off, e.len);
  return true;
}

/* Records a write (`bytes` NULL: a delete) of the current key's value
 * `name`; returns whether it had a value. */
static inline bool eddy__batch_write(const char *name, const void *bytes, size_t len) {
  eddy__batch *B = &eddy__B;
  eddy__entry e = {0, EDDY__DELETED, 0, 0};
  if (bytes) {
    e.where = EDDY__ARENA;
    e.off = (uint32_t)B->arena.len;
    e.len = (uint32_t)len;
    eddy_buf_append(&B->arena, bytes, len);
  }
  eddy__values *v = &B->keys[B->current];
  int64_t i = eddy__slot(name);
  if (B->nundo == B->undo_cap) {
    B->undo_cap = B->undo_cap ? B->undo_cap * 2 : 8;
    B->undo = realloc(B->undo, B->undo_cap * sizeof *B->undo);
    if (!B->undo) abort();
  }
  bool existed;
  if (i >= 0) {
    B->undo[B->nundo++] = (eddy__undo){(uint32_t)i, v->e[i], false};
    existed = v->e[i].where != EDDY__DELETED;
    e.name = v->e[i].name;
    v->e[i] = e;
  } else {
    if (v->n == v->cap) {
      v->cap = v->cap ? v->cap * 2 : 4;
      v->e = realloc(v->e, v->cap * sizeof *v->e);
      if (!v->e) abort();
    }
    i = v->n;
    e.name = eddy__name(name, strlen(name));
    v->e[v->n++] = e;
    B->undo[B->nundo++] = (eddy__undo){(uint32_t)i, e, true};
    existed = false;
  }
  for (size_t t = 0; t < B->touched.len; t++) {
    if (B->touched.ptr[t] == (uint32_t)i) return existed;
  }
  eddy__u32s_push(&B->touched, (uint32_t)i);
  return existed;
}

/* ---- state of the current key ------------------------------------------- */

static inline operator_string_t eddy__s(const char *s) {
  return (operator_string_t){(uint8_t *)s, strlen(s)};
}
static inline operator_list_u8_t eddy__b(const void *p, size_t n) {
  return (operator_list_u8_t){(uint8_t *)p, n};
}
/* Moves bytes returned by the host into `out` (NUL-terminated). */
static inline void eddy__take(operator_list_u8_t *got, eddy_buf *out) {
  eddy_buf_clear(out);
  eddy_buf_append(out, got->ptr, got->len);
  operator_list_u8_free(got);
}

/* Single value `name`: true and its bytes in `out` when present; false (and
 * `out` emptied) when missing. */
static inline bool eddy_get(const char *name, eddy_buf *out) {
  if (eddy__B.active) return eddy__batch_get(name, out);
  operator_string_t n = eddy__s(name);
  operator_list_u8_t got;
  if (!eddy_operator_state_get(&n, &got)) {
    eddy_buf_clear(out);
    return false;
  }
  eddy__take(&got, out);
  return true;
}
/* Stores `len` bytes under `name`. */
static inline void eddy_set(const char *name, const void *bytes, size_t len) {
  if (eddy__B.active) {
    eddy__batch_write(name, bytes ? bytes : "", len);
    return;
  }
  operator_string_t n = eddy__s(name);
  operator_list_u8_t v = eddy__b(bytes, len);
  eddy_operator_state_set(&n, &v);
}
/* Removes value `name`; true when there was one. */
static inline bool eddy_delete(const char *name) {
  if (eddy__B.active) return eddy__batch_write(name, NULL, 0);
  operator_string_t n = eddy__s(name);
  return eddy_operator_state_delete(&n);
}

/* Maps: field -> bytes. */
static inline bool eddy_map_get(const char *name, const char *field, eddy_buf *out) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    eddy_buf_clear(out);
    return false;
  }
  operator_string_t n = eddy__s(name), f = eddy__s(field);
  operator_list_u8_t got;
  if (!eddy_operator_state_map_get(&n, &f, &got)) {
    eddy_buf_clear(out);
    return false;
  }
  eddy__take(&got, out);
  return true;
}
static inline void eddy_map_set(const char *name, const char *field, const void *bytes, size_t len) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return;
  }
  operator_string_t n = eddy__s(name), f = eddy__s(field);
  operator_list_u8_t v = eddy__b(bytes, len);
  eddy_operator_state_map_set(&n, &f, &v);
}
static inline bool eddy_map_delete(const char *name, const char *field) {
  if (eddy__B.active) return eddy__B.stop = true, false;
  operator_string_t n = eddy__s(name), f = eddy__s(field);
  return eddy_operator_state_map_delete(&n, &f);
}
static inline uint32_t eddy_map_len(const char *name) {
  if (eddy__B.active) return eddy__B.stop = true, 0;
  operator_string_t n = eddy__s(name);
  return eddy_operator_state_map_len(&n);
}

/* A page of map `name`: at most `limit` fields from field `start` on
 * (`start_len` bytes; inclusive; "" for the first field), sorted by field,
 * into `out`: field i is `out->ptr[i].f0` and its value `out->ptr[i].f1`
 * (each `.ptr` / `.len`, not NUL-terminated); release them with
 * eddy_fields_free. Only those fields are read, whatever the map's size:
 * the next page starts at the last field with its terminating NUL byte,
 * `eddy_map_range(name, f, strlen(f) + 1, limit, out)`. */
typedef operator_list_tuple2_string_list_u8_t eddy_fields;
static inline void eddy_map_range(const char *name, const char *start, size_t start_len,
                                  uint32_t limit, eddy_fields *out) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    out->ptr = NULL;
    out->len = 0;
    return;
  }
  operator_string_t n = eddy__s(name), s = {(uint8_t *)start, start_len};
  eddy_operator_state_map_range(&n, &s, limit, out);
}
static inline void eddy_fields_free(eddy_fields *f) { operator_list_tuple2_string_list_u8_free(f); }

/* Append-only lists. Items of eddy_list_range are `items.ptr[i].ptr` /
 * `items.ptr[i].len`, oldest first; release them with eddy_items_free. */
typedef operator_list_list_u8_t eddy_items;
static inline uint32_t eddy_list_push(const char *name, const void *bytes, size_t len) {
  if (eddy__B.active) return eddy__B.stop = true, 0;
  operator_string_t n = eddy__s(name);
  operator_list_u8_t v = eddy__b(bytes, len);
  return eddy_operator_state_list_push(&n, &v);
}
static inline uint32_t eddy_list_len(const char *name) {
  if (eddy__B.active) return eddy__B.stop = true, 0;
  operator_string_t n = eddy__s(name);
  return eddy_operator_state_list_len(&n);
}
static inline void eddy_list_range(const char *name, uint32_t start, uint32_t end, eddy_items *out) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    out->ptr = NULL;
    out->len = 0;
    return;
  }
  operator_string_t n = eddy__s(name);
  eddy_operator_state_list_range(&n, start, end, out);
}
static inline void eddy_items_free(eddy_items *items) { operator_list_list_u8_free(items); }
/* Keeps the newest `keep` items; returns how many were dropped. */
static inline uint32_t eddy_list_trim(const char *name, uint32_t keep) {
  if (eddy__B.active) return eddy__B.stop = true, 0;
  operator_string_t n = eddy__s(name);
  return eddy_operator_state_list_trim(&n, keep);
}
/* Removes all state of the current key for this operator. */
static inline void eddy_clear(void) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return;
  }
  eddy_operator_state_clear();
}

/* ---- output and log ----------------------------------------------------- */

/* Emits `len` bytes keyed by `key` (takes effect if `handle` succeeds). */
static inline void eddy_emit(const char *key, size_t key_len, const void *bytes, size_t len) {
  if (eddy__B.active) {
    eddy__strings_push(&eddy__B.emit_keys, key, key_len);
    eddy__strings_push(&eddy__B.emit_payloads, bytes, len);
    return;
  }
  operator_string_t k = {(uint8_t *)key, key_len};
  operator_list_u8_t v = eddy__b(bytes, len);
  eddy_operator_output_emit(&k, &v);
}
#endif /* EDDY_WINDOW: the keyed operator's state and emits */

enum {
  EDDY_TRACE = EDDY_OPERATOR_TYPES_LEVEL_TRACE,
  EDDY_DEBUG = EDDY_OPERATOR_TYPES_LEVEL_DEBUG,
  EDDY_INFO = EDDY_OPERATOR_TYPES_LEVEL_INFO,
  EDDY_WARN = EDDY_OPERATOR_TYPES_LEVEL_WARN,
  EDDY_ERROR = EDDY_OPERATOR_TYPES_LEVEL_ERROR,
};
/* Writes a printf-style line to the host's log at `level` (EDDY_INFO...). */
__attribute__((format(printf, 2, 3))) static inline void eddy_log(int level, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  char *msg = small;
  if (n >= (int)sizeof small) {
    msg = malloc((size_t)n + 1);
    if (!msg) abort();
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  operator_string_t m = {(uint8_t *)msg, n > 0 ? (size_t)n : 0};
  eddy_operator_log_log((eddy_operator_log_level_t)level, &m);
  if (msg != small) free(msg);
}

#ifndef EDDY_WINDOW
/* ---- timers and the watermark ---------------------------------------------
 *
 * Named event-time timers of the current key (wit/timers.wit). A name holds
 * one pending time: a timeout is eddy_timer_set("timeout", t), and setting
 * it again replaces it. Once the watermark (the largest event time read so
 * far minus the pipeline's `max_out_of_order`) is past `t`, or a file input
 * has ended, the host calls your eddy_on_timer. Timer changes, like state
 * writes, take effect only when the call that made them succeeds. Calling
 * these from `init` traps (no key is current).
 *
 * Timer calls are served on the per-event path: during a batch they mark
 * the event for it (as map and list calls do) and find nothing.
 */

/* A timer that fired, as eddy_on_timer receives it. `key` and `name` are
 * NUL-terminated and live until eddy_on_timer returns. */
typedef struct {
  const char *key;  /* the key it belongs to: state, timer and emit calls act on it */
  size_t key_len;
  const char *name; /* its name */
  size_t name_len;
  int64_t at;       /* the event time it was set for (the watermark is past it) */
} eddy_timer;

/* The timer handler: define it in one source file of an operator that sets
 * timers. Return NULL for success or an error made with eddy_errorf(): the
 * firing is then dead-lettered with it, and its state writes, timer changes
 * and emits are discarded (the timer is consumed either way). */
eddy_error eddy_on_timer(const eddy_timer *timer) __attribute__((weak));

/* A pending timer of the current key (eddy_timers_list). */
typedef struct {
  char *name; /* NUL-terminated */
  size_t name_len;
  int64_t at;
} eddy_pending;
/* Pending timers; free with eddy_pending_free. */
typedef struct {
  eddy_pending *ptr;
  size_t len;
} eddy_pendings;

/* Sets timer `name` of the current key to fire at event time `at`,
 * replacing the pending one of that name. A time the watermark already
 * passed fires at its next advance. */
static inline void eddy_timer_set(const char *name, int64_t at) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return;
  }
  operator_string_t n = eddy__s(name);
  eddy_operator_timers_set(&n, at);
}
/* Cancels timer `name` of the current key; true when one was pending. */
static inline bool eddy_timer_clear(const char *name) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return false;
  }
  operator_string_t n = eddy__s(name);
  return eddy_operator_timers_clear(&n);
}
/* When timer `name` of the current key fires: true and the time in `*at`,
 * or false when none is pending. */
static inline bool eddy_timer_get(const char *name, int64_t *at) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return false;
  }
  operator_string_t n = eddy__s(name);
  return eddy_operator_timers_get(&n, at);
}
/* Every pending timer of the current key, sorted by name, into `out`. */
static inline void eddy_timers_list(eddy_pendings *out) {
  out->ptr = NULL;
  out->len = 0;
  if (eddy__B.active) {
    eddy__B.stop = true;
    return;
  }
  eddy_operator_timers_list_timer_t got;
  eddy_operator_timers_list(&got);
  if (got.len) {
    out->ptr = calloc(got.len, sizeof *out->ptr);
    if (!out->ptr) abort();
  }
  for (size_t i = 0; i < got.len; i++) {
    size_t n = got.ptr[i].name.len;
    char *name = malloc(n + 1);
    if (!name) abort();
    if (n) memcpy(name, got.ptr[i].name.ptr, n);
    name[n] = 0;
    out->ptr[i].name = name;
    out->ptr[i].name_len = n;
    out->ptr[i].at = got.ptr[i].at;
  }
  out->len = got.len;
  eddy_operator_timers_list_timer_free(&got);
}
static inline void eddy_pending_free(eddy_pendings *l) {
  for (size_t i = 0; i < l->len; i++) free(l->ptr[i].name);
  free(l->ptr);
  l->ptr = NULL;
  l->len = 0;
}
/* The watermark: every event that is not late has a time at least this.
 * INT64_MIN before the first event with a time (and when the pipeline names
 * no time field), INT64_MAX once a file input ended. */
static inline int64_t eddy_watermark(void) {
  if (eddy__B.active) {
    eddy__B.stop = true;
    return INT64_MIN;
  }
  return eddy_operator_timers_watermark();
}
/* Whether the event being handled is late: only ever true under
 * `[source.watermark] late = "deliver"`, in `handle` of the first operator
 * (a late event is never in a batch). */
static inline bool eddy_event_late(void) {
  if (eddy__B.active) return false;
  return eddy_operator_timers_late();
}
#endif /* EDDY_WINDOW: timers */

/* ---- JSON reading --------------------------------------------------------
 *
 * A cursor over JSON text. Read one value with eddy_json_next_value (arrays
 * and objects are validated and skipped whole), or walk the members of an
 * object with eddy_json_object_begin / eddy_json_object_next. Numbers are
 * parsed exactly as serde_json parses them (so an f64 read here equals the
 * one a Rust operator reads), strings are validated and decoded on demand.
 * On a syntax error the functions return false / -1 and record a message
 * with serde_json's wording and position, available from eddy_json_error.
 */

typedef enum {
  EDDY_JSON_NULL,
  EDDY_JSON_BOOL,
  EDDY_JSON_NUMBER,
  EDDY_JSON_STRING,
  EDDY_JSON_ARRAY,
  EDDY_JSON_OBJECT,
} eddy_json_kind;

/* How serde_json classifies a number: a non-negative integer, a negative
 * integer, or anything else (fraction, exponent, -0, too big). */
typedef enum { EDDY_NUM_U64, EDDY_NUM_I64, EDDY_NUM_F64 } eddy_num_kind;

typedef struct {
  eddy_json_kind kind;
  size_t start, end;   /* byte range of the value in the text */
  bool boolean;        /* EDDY_JSON_BOOL */
  eddy_num_kind num;   /* EDDY_JSON_NUMBER: which of u / i / f holds it */
  uint64_t u;
  int64_t i;
  double f;
  bool out_of_range;   /* number too large for an f64 ("number out of range") */
} eddy_json_value;

typedef struct {
  const char *s;
  size_t len, pos;
  int depth;
  bool first;          /* object iteration: before the first member */
  char *err;           /* first error message (malloc'd), NULL when none */
  size_t err_pos;      /* bytes consumed when it happened */
} eddy_json;

static inline void eddy_json_init(eddy_json *j, const void *text, size_t len) {
  *j = (eddy_json){(const char *)text, len, 0, 0, false, NULL, 0};
}
static inline void eddy_json_free(eddy_json *j) {
  free(j->err);
  j->err = NULL;
}

/* Records an error (the first one wins) at `pos` bytes consumed. */
__attribute__((format(printf, 3, 4))) static inline void eddy_json_fail(eddy_json *j, size_t pos, const char *fmt, ...) {
  if (j->err) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  j->err = malloc((size_t)n + 1);
  if (!j->err) abort();
  va_start(ap, fmt);
  vsnprintf(j->err, (size_t)n + 1, fmt, ap);
  va_end(ap);
  j->err_pos = pos > j->len ? j->len : pos;
}

/* The recorded error as an operator error: "<prefix><message> at line L
 * column C", as serde_json words it. */
static inline eddy_error eddy_json_error(const eddy_json *j, const char *prefix) {
  size_t line = 1, col = 0;
  for (size_t k = 0; k < j->err_pos; k++) {
    if (j->s[k] == '\n') {
      line++;
      col = 0;
    } else {
      col++;
    }
  }
  if (!j->err) return eddy_errorf("%sinvalid JSON", prefix);
  return eddy_errorf("%s%s at line %zu column %zu", prefix, j->err, line, col);
}

static inline void eddy__ws(eddy_json *j) {
  while (j->pos < j->len) {
    char c = j->s[j->pos];
    if (c != ' ' && c != '\n' && c != '\t' && c != '\r') break;
    j->pos++;
  }
}
static inline int eddy__peek(eddy_json *j) { return j->pos < j->len ? (unsigned char)j->s[j->pos] : -1; }
static inline bool eddy__digit(int c) { return c >= '0' && c <= '9'; }

/* 10^0 .. 10^22: the powers of ten that are exact doubles. */
static const double eddy__exact_pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                             1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                             1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Writes `v` in decimal to `out` (room for 20 bytes); returns the length. */
static inline int eddy__u64_text(uint64_t v, char *out) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  return n;
}

/* The value of the JSON number text `s` (`n` bytes, syntax checked) when it
 * can be had exactly without strtod: at most 19 significant digits forming
 * m <= 2^53, times 10^e with |e| <= 22, is one correctly rounded operation
 * on exact doubles (Clinger's fast path), so the same double as strtod's
 * (and serde_json's). False otherwise. */
static inline bool eddy__fast_f64(const char *s, size_t n, double *out) {
  size_t i = 0;
  bool neg = s[0] == '-', point = false;
  uint64_t m = 0;
  int digits = 0, e = 0;
  if (neg) i++;
  for (; i < n; i++) {
    char c = s[i];
    if (c == '.') {
      point = true;
      continue;
    }
    if (c == 'e' || c == 'E') break;
    if (m == 0 && c == '0') { /* a leading zero */
      if (point) e--;
      continue;
    }
    if (++digits > 19) return false;
    m = m * 10 + (uint64_t)(c - '0');
    if (point) e--;
  }
  if (i < n) { /* the exponent */
    bool eneg = false;
    int x = 0;
    i++;
    if (s[i] == '+' || s[i] == '-') eneg = s[i++] == '-';
    for (; i < n; i++) {
      x = x * 10 + (s[i] - '0');
      if (x > 400) return false;
    }
    e += eneg ? -x : x;
  }
  if (m == 0) {
    *out = neg ? -0.0 : 0.0;
    return true;
  }
  if (m > (1ull << 53) || e < -22 || e > 22) return false;
  double f = (double)m;
  f = e < 0 ? f / eddy__exact_pow10[-e] : f * eddy__exact_pow10[e];
  *out = neg ? -f : f;
  return true;
}

/* 10^0 .. 10^308 as correctly rounded doubles. */
static inline double eddy__pow10(int e) {
  static double table[309];
  static bool ready;
  if (!ready) {
    char buf[16];
    for (int k = 0; k < 309; k++) {
      snprintf(buf, sizeof buf, "1e%d", k);
      table[k] = strtod(buf, NULL);
    }
    ready = true;
  }
  return table[e];
}

/* The float's value is read from its text by eddy__number once the syntax
 * is checked; the syntax readers below only mark it. */
#define EDDY__FLOAT_LATER(v) ((v)->f = 0.0)

#define EDDY__U64_OVERFLOW(a, d) ((a) >= UINT64_MAX / 10 && ((a) > UINT64_MAX / 10 || (uint64_t)(d) > UINT64_MAX % 10))

/* After the significand: fraction and exponent, following serde_json. */
static inline bool eddy__exponent(eddy_json *j, eddy_json_value *v, bool positive, uint64_t sig, int32_t start_exp) {
  j->pos++; /* e or E */
  bool pos_exp = true;
  if (eddy__peek(j) == '+') {
    j->pos++;
  } else if (eddy__peek(j) == '-') {
    j->pos++;
    pos_exp = false;
  }
  int c = eddy__peek(j);
  if (c < 0) return eddy_json_fail(j, j->pos, "EOF while parsing a value"), false;
  j->pos++;
  if (!eddy__digit(c)) return eddy_json_fail(j, j->pos, "invalid number"), false;
  int32_t exp = c - '0';
  while (eddy__digit(c = eddy__peek(j))) {
    j->pos++;
    int32_t d = c - '0';
    if (exp >= INT32_MAX / 10 && (exp > INT32_MAX / 10 || d > INT32_MAX % 10)) {
      if (sig != 0 && pos_exp) v->out_of_range = true;
      while (eddy__digit(eddy__peek(j))) j->pos++;
      v->f = positive ? 0.0 : -0.0;
      return true;
    }
    exp = exp * 10 + d;
  }
  int64_t fin = pos_exp ? (int64_t)start_exp + exp : (int64_t)start_exp - exp;
  if (fin > INT32_MAX) fin = INT32_MAX;
  if (fin < INT32_MIN) fin = INT32_MIN;
  EDDY__FLOAT_LATER(v);
  return true;
}

static inline bool eddy__decimal(eddy_json *j, eddy_json_value *v, bool positive, uint64_t sig, int32_t exp_before) {
  j->pos++; /* . */
  int32_t exp_after = 0;
  int c;
  while (eddy__digit(c = eddy__peek(j))) {
    if (EDDY__U64_OVERFLOW(sig, c - '0')) {
      /* serde_json ignores the digits that do not fit. */
      while (eddy__digit(eddy__peek(j))) j->pos++;
      c = eddy__peek(j);
      if (c == 'e' || c == 'E') return eddy__exponent(j, v, positive, sig, exp_before + exp_after);
      EDDY__FLOAT_LATER(v);
      return true;
    }
    j->pos++;
    sig = sig * 10 + (uint64_t)(c - '0');
    exp_after--;
  }
  if (exp_after == 0) {
    eddy_json_fail(j, j->pos + 1, c < 0 ? "EOF while parsing a value" : "invalid number");
    return false;
  }
  if (c == 'e' || c == 'E') return eddy__exponent(j, v, positive, sig, exp_before + exp_after);
  EDDY__FLOAT_LATER(v);
  return true;
}

/* The syntax and integer kinds of a number at the cursor (after the '-'
 * when negative), as serde_json reads it: u64, i64, or f64. */
static inline bool eddy__number_parts(eddy_json *j, eddy_json_value *v, bool positive) {
  v->kind = EDDY_JSON_NUMBER;
  v->num = EDDY_NUM_F64;
  int c = eddy__peek(j);
  if (c < 0) return eddy_json_fail(j, j->pos, "EOF while parsing a value"), false;
  j->pos++;
  uint64_t sig = 0;
  if (c == '0') {
    if (eddy__digit(eddy__peek(j))) return eddy_json_fail(j, j->pos + 1, "invalid number"), false;
  } else if (c >= '1' && c <= '9') {
    sig = (uint64_t)(c - '0');
    while (eddy__digit(c = eddy__peek(j))) {
      if (EDDY__U64_OVERFLOW(sig, c - '0')) {
        /* serde_json: keep the leading digits, count the rest as exponent. */
        int32_t exp = 0;
        while (eddy__digit(eddy__peek(j))) {
          j->pos++;
          exp++;
        }
        c = eddy__peek(j);
        if (c == '.') return eddy__decimal(j, v, positive, sig, exp);
        if (c == 'e' || c == 'E') return eddy__exponent(j, v, positive, sig, exp);
        EDDY__FLOAT_LATER(v);
        return true;
      }
      j->pos++;
      sig = sig * 10 + (uint64_t)(c - '0');
    }
  } else {
    return eddy_json_fail(j, j->pos, "invalid number"), false;
  }
  c = eddy__peek(j);
  if (c == '.') return eddy__decimal(j, v, positive, sig, 0);
  if (c == 'e' || c == 'E') return eddy__exponent(j, v, positive, sig, 0);
  if (positive) {
    v->num = EDDY_NUM_U64;
    v->u = sig;
    v->f = (double)sig;
  } else {
    int64_t neg = (int64_t)(0 - sig);
    if (neg >= 0) {
      v->f = -(double)sig;
    } else {
      v->num = EDDY_NUM_I64;
      v->i = neg;
      v->f = (double)neg;
    }
  }
  return true;
}

/* A number at the cursor (after the '-' when negative). A float gets the
 * correctly rounded value of its text (strtod), as serde_json with its
 * `float_roundtrip` feature (which the Rust SDK enables) reads it. */
static inline bool eddy__number(eddy_json *j, eddy_json_value *v, bool positive) {
  size_t start = j->pos - (positive ? 0 : 1);
  if (!eddy__number_parts(j, v, positive)) return false;
  if (v->num != EDDY_NUM_F64) return true;
  size_t n = j->pos - start;
  if (eddy__fast_f64(j->s + start, n, &v->f)) {
    v->out_of_range = false;
    return true;
  }
  char small[64];
  char *text = n < sizeof small ? small : (char *)malloc(n + 1);
  if (!text) return eddy_json_fail(j, j->pos, "out of memory"), false;
  memcpy(text, j->s + start, n);
  text[n] = 0;
  v->f = strtod(text, NULL);
  if (text != small) free(text);
  v->out_of_range = isinf(v->f);
  return true;
}

static inline int eddy__hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes the string whose opening quote is at `start` into `out` (when not
 * NULL); returns the position after the closing quote, or 0 on an error
 * (recorded in `j`). */
static inline size_t eddy__string(eddy_json *j, size_t start, eddy_buf *out) {
  size_t p = start + 1;
  for (;;) {
    if (p >= j->len) return eddy_json_fail(j, j->len, "EOF while parsing a string"), 0;
    unsigned char c = (unsigned char)j->s[p];
    if (c == '"') return p + 1;
    if (c < 0x20) return eddy_json_fail(j, p + 1, "control character (\\u0000-\\u001F) found while parsing a string"), 0;
    if (c != '\\') {
      if (out) eddy_buf_putc(out, (char)c);
      p++;
      continue;
    }
    if (p + 1 >= j->len) return eddy_json_fail(j, j->len, "EOF while parsing a string"), 0;
    char e = j->s[p + 1];
    p += 2;
    char plain = 0;
    switch (e) {
      case '"': plain = '"'; break;
      case '\\': plain = '\\'; break;
      case '/': plain = '/'; break;
      case 'b': plain = '\b'; break;
      case 'f': plain = '\f'; break;
      case 'n': plain = '\n'; break;
      case 'r': plain = '\r'; break;
      case 't': plain = '\t'; break;
      case 'u': break;
      default: return eddy_json_fail(j, p, "invalid escape"), 0;
    }
    if (plain) {
      if (out) eddy_buf_putc(out, plain);
      continue;
    }
    uint32_t cp = 0;
    for (int k = 0; k < 4; k++, p++) {
      if (p >= j->len) return eddy_json_fail(j, j->len, "EOF while parsing a string"), 0;
      int h = eddy__hex((unsigned char)j->s[p]);
      if (h < 0) return eddy_json_fail(j, p + 1, "invalid escape"), 0;
      cp = cp * 16 + (uint32_t)h;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      uint32_t lo = 0;
      if (p + 6 <= j->len && j->s[p] == '\\' && j->s[p + 1] == 'u') {
        for (int k = 0; k < 4; k++) {
          int h = eddy__hex((unsigned char)j->s[p + 2 + k]);
          if (h < 0) return eddy_json_fail(j, p + 3 + k, "invalid escape"), 0;
          lo = lo * 16 + (uint32_t)h;
        }
      }
      if (lo < 0xDC00 || lo > 0xDFFF) return eddy_json_fail(j, p, "lone leading surrogate in hex escape"), 0;
      p += 6;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      return eddy_json_fail(j, p, "lone leading surrogate in hex escape"), 0;
    }
    if (out) {
      char u[4];
      size_t n;
      if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
      } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
      } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
      } else {
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
      }
      eddy_buf_append(out, u, n);
    }
  }
}

static inline bool eddy__ident(eddy_json *j, const char *rest) {
  for (; *rest; rest++) {
    int c = eddy__peek(j);
    if (c < 0) return eddy_json_fail(j, j->pos, "EOF while parsing a value"), false;
    j->pos++;
    if (c != *rest) return eddy_json_fail(j, j->pos, "expected ident"), false;
  }
  return true;
}

/* Reads the value at the cursor into `v` (whitespace before it is skipped).
 * Arrays and objects are checked and skipped whole (nesting up to 128 deep,
 * as serde_json allows). Returns false on a syntax error. */
static inline bool eddy_json_next_value(eddy_json *j, eddy_json_value *v) {
  memset(v, 0, sizeof *v);
  eddy__ws(j);
  v->start = j->pos;
  int c = eddy__peek(j);
  bool ok = true;
  switch (c) {
    case -1: return eddy_json_fail(j, j->pos, "EOF while parsing a value"), false;
    case 'n': j->pos++, v->kind = EDDY_JSON_NULL, ok = eddy__ident(j, "ull"); break;
    case 't': j->pos++, v->kind = EDDY_JSON_BOOL, v->boolean = true, ok = eddy__ident(j, "rue"); break;
    case 'f': j->pos++, v->kind = EDDY_JSON_BOOL, ok = eddy__ident(j, "alse"); break;
    case '-': j->pos++, ok = eddy__number(j, v, false); break;
    case '"': {
      v->kind = EDDY_JSON_STRING;
      size_t end = eddy__string(j, j->pos, NULL);
      if (!end) return false;
      j->pos = end;
      break;
    }
    case '[':
    case '{': {
      bool obj = c == '{';
      v->kind = obj ? EDDY_JSON_OBJECT : EDDY_JSON_ARRAY;
      if (++j->depth > 128) return eddy_json_fail(j, j->pos + 1, "recursion limit exceeded"), false;
      j->pos++;
      eddy__ws(j);
      if (eddy__peek(j) == (obj ? '}' : ']')) {
        j->pos++;
      } else {
        for (;;) {
          eddy_json_value item;
          if (obj) {
            eddy__ws(j);
            int k = eddy__peek(j);
            if (k < 0) return eddy_json_fail(j, j->pos, "EOF while parsing a value"), false;
            if (k != '"') return eddy_json_fail(j, j->pos + 1, "key must be a string"), false;
            size_t end = eddy__string(j, j->pos, NULL);
            if (!end) return false;
            j->pos = end;
            eddy__ws(j);
            k = eddy__peek(j);
            if (k != ':') return eddy_json_fail(j, j->pos + 1, k < 0 ? "EOF while parsing an object" : "expected `:`"), false;
            j->pos++;
          }
          if (!eddy_json_next_value(j, &item)) return false;
          eddy__ws(j);
          int k = eddy__peek(j);
          if (k == (obj ? '}' : ']')) {
            j->pos++;
            break;
          }
          if (k != ',') {
            const char *msg = k < 0 ? (obj ? "EOF while parsing an object" : "EOF while parsing a list")
                                    : (obj ? "expected `,` or `}`" : "expected `,` or `]`");
            return eddy_json_fail(j, j->pos + (k < 0 ? 0 : 1), "%s", msg), false;
          }
          j->pos++;
          eddy__ws(j);
          if (eddy__peek(j) == (obj ? '}' : ']')) return eddy_json_fail(j, j->pos + 1, "trailing comma"), false;
        }
      }
      j->depth--;
      break;
    }
    default:
      if (eddy__digit(c)) {
        ok = eddy__number(j, v, true);
      } else {
        return eddy_json_fail(j, j->pos + 1, "expected value"), false;
      }
  }
  v->end = j->pos;
  return ok;
}

/* Starts walking an object: true when the next value is an object (its '{'
 * is consumed); false, consuming nothing, when it is something else. */
static inline bool eddy_json_object_begin(eddy_json *j) {
  eddy__ws(j);
  if (eddy__peek(j) != '{') return false;
  j->pos++;
  j->first = true;
  return true;
}

/* The next member of the object being walked: 1 with its key (a string
 * value) and value, 0 at the end (the '}' consumed), -1 on an error. */
static inline int eddy_json_object_next(eddy_json *j, eddy_json_value *key, eddy_json_value *val) {
  eddy__ws(j);
  int c = eddy__peek(j);
  if (c < 0) return eddy_json_fail(j, j->pos, "EOF while parsing an object"), -1;
  if (c == '}') {
    j->pos++;
    return 0;
  }
  if (j->first) {
    j->first = false;
  } else if (c == ',') {
    j->pos++;
    eddy__ws(j);
    c = eddy__peek(j);
    if (c == '}') return eddy_json_fail(j, j->pos + 1, "trailing comma"), -1;
    if (c < 0) return eddy_json_fail(j, j->pos, "EOF while parsing a value"), -1;
  } else {
    return eddy_json_fail(j, j->pos + 1, "expected `,` or `}`"), -1;
  }
  if (c != '"') return eddy_json_fail(j, j->pos + 1, "key must be a string"), -1;
  if (!eddy_json_next_value(j, key)) return -1;
  eddy__ws(j);
  c = eddy__peek(j);
  if (c != ':') return eddy_json_fail(j, j->pos + (c < 0 ? 0 : 1), c < 0 ? "EOF while parsing an object" : "expected `:`"), -1;
  j->pos++;
  return eddy_json_next_value(j, val) ? 1 : -1;
}

/* Checks that only whitespace follows ("trailing characters" otherwise). */
static inline bool eddy_json_end(eddy_json *j) {
  eddy__ws(j);
  if (j->pos < j->len) return eddy_json_fail(j, j->pos + 1, "trailing characters"), false;
  return true;
}

/* The decoded text of string value `v`, appended to `out`. */
static inline bool eddy_json_string(eddy_json *j, const eddy_json_value *v, eddy_buf *out) {
  eddy_buf_reserve(out, v->end - v->start);
  return eddy__string(j, v->start, out) != 0;
}

/* Whether string value `v` decodes to the NUL-terminated `s`. */
static inline bool eddy_json_string_is(eddy_json *j, const eddy_json_value *v, const char *s) {
  size_t n = strlen(s);
  if (v->kind != EDDY_JSON_STRING) return false;
  /* Fast path: no escapes, compare the raw bytes. */
  if (!memchr(j->s + v->start, '\\', v->end - v->start))
    return v->end - v->start - 2 == n && memcmp(j->s + v->start + 1, s, n) == 0;
  eddy_buf b = {0};
  bool same = eddy__string(j, v->start, &b) && b.len == n && memcmp(b.ptr, s, n) == 0;
  eddy_buf_free(&b);
  return same;
}

/* Number value `v` as an f64, as serde_json gives it to a Rust `f64`. False
 * when `v` is not a number. */
static inline bool eddy_json_f64(const eddy_json_value *v, double *out) {
  if (v->kind != EDDY_JSON_NUMBER) return false;
  *out = v->f;
  return true;
}

/* Whether m * 10^k reads back as v. Exact arithmetic when m and 10^|k| are
 * exact doubles (one correctly rounded operation), else strtod. */
static inline bool eddy__reads_back(uint64_t m, int k, double v) {
  if (m < (1ull << 53) && k >= -22 && k <= 22) {
    double x = (double)m;
    return (k >= 0 ? x * eddy__pow10(k) : x / eddy__pow10(-k)) == v;
  }
  char buf[48];
  snprintf(buf, sizeof buf, "%llue%d", (unsigned long long)m, k);
  return strtod(buf, NULL) == v;
}

/* Whether some p-digit decimal reads back as v, given v's first 41
 * significant digits `d` and decimal exponent `e`: then *m holds the closest
 * one that does (v ~ *m * 10^(e - p + 1)): the digits rounded half to even,
 * or the ones above them when only those read back (the gap above v can be
 * wider than the gap below). */
static inline bool eddy__probe(double v, const char *d, int e, int p, uint64_t *m) {
  uint64_t r = 0;
  for (int i = 0; i < p; i++) r = r * 10 + (uint64_t)(d[i] - '0');
  bool zeros = true;
  for (int i = p + 1; i < 41; i++) zeros = zeros && d[i] == '0';
  bool exact = d[p] == '0' && zeros;
  bool up = d[p] > '5' || (d[p] == '5' && (!zeros || (r & 1)));
  int k = e - p + 1;
  if (eddy__reads_back(r + up, k, v)) return *m = r + up, true;
  if (!up && !exact && eddy__reads_back(r + 1, k, v)) return *m = r + 1, true;
  return false;
}

/* The shortest digits that read back as finite v > 0, the closest to v of
 * those (what serde_json prints): into d (no trailing zeros, NUL-
 * terminated); returns the decimal exponent e, v ~ d[0].d[1..] * 10^e.
 * Whether p digits suffice only grows with p (17 always do), so p is found
 * by bisection, each step checked with exact arithmetic where it can be. */
static inline int eddy__shortest(double v, char d[24]) {
  char buf[64], dig[42];
  snprintf(buf, sizeof buf, "%.40e", v); /* d.ddd...e+XX, 41 digits */
  dig[0] = buf[0];
  memcpy(dig + 1, buf + 2, 40);
  dig[41] = 0;
  int e = atoi(buf + 43);
  uint64_t m = 0;
  int lo = 1, hi = 17;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (eddy__probe(v, dig, e, mid, &m))
      hi = mid;
    else
      lo = mid + 1;
  }
  eddy__probe(v, dig, e, lo, &m);
  int n = snprintf(d, 24, "%llu", (unsigned long long)m);
  e += n - lo; /* rounding up to 10^p adds a digit */
  while (n > 1 && d[n - 1] == '0') d[--n] = 0;
  return e;
}

/* Appends finite v > 0 in fixed notation with its shortest digits, when
 * that is quick to find exactly: 1e-5 <= v and, for the number k of decimals
 * it needs, v * 10^k < 2^52 (k <= 22). For each k from 0, the k-decimal
 * numbers that read back as v are those within v's rounding interval, which
 * is narrower than their spacing 10^-k: at most one, the integer c nearest
 * v * 10^k (c - 1 or c + 1 when that product rounded), checked with one
 * correctly rounded division. The first k that has one gives the shortest
 * digits, as serde_json prints them for these magnitudes (fixed notation
 * from 1e-5 to 1e16). False, writing nothing, otherwise. */
static inline bool eddy__f64_fixed(eddy_buf *b, double v) {
  const double limit = 4503599627370496.0; /* 2^52 */
  if (v < 1e-5 || v >= limit) return false;
  for (int k = 0; k <= 22; k++) {
    double x = v * eddy__exact_pow10[k];
    if (x >= limit) return false;
    uint64_t c = (uint64_t)(x + 0.5);
    for (uint64_t t = c ? c - 1 : 0; t <= c + 1; t++) {
      if ((double)t / eddy__exact_pow10[k] != v) continue;
      char d[24];
      int n = eddy__u64_text(t, d);
      if (k == 0) {
        eddy_buf_append(b, d, (size_t)n);
        eddy_buf_puts(b, ".0");
      } else if (n > k) {
        eddy_buf_append(b, d, (size_t)(n - k));
        eddy_buf_putc(b, '.');
        eddy_buf_append(b, d + n - k, (size_t)k);
      } else {
        eddy_buf_puts(b, "0.");
        for (int z = n; z < k; z++) eddy_buf_putc(b, '0');
        eddy_buf_append(b, d, (size_t)n);
      }
      return true;
    }
  }
  return false;
}

/* Appends f64 `v` as serde_json prints it: `40.0`, `0.1`, `1e+16`,
 * `1.5e-7`, shortest digits that read back exactly; `null` when not finite. */
static inline void eddy_json_write_f64(eddy_buf *b, double v) {
  if (!isfinite(v)) {
    eddy_buf_puts(b, "null");
    return;
  }
  if (signbit(v)) eddy_buf_putc(b, '-'), v = -v;
  if (v == 0) {
    eddy_buf_puts(b, "0.0");
    return;
  }
  if (eddy__f64_fixed(b, v)) return;
  char d[24];
  int e = eddy__shortest(v, d);
  int n = (int)strlen(d);
  if (e >= -5 && e <= 15) {
    if (n - 1 <= e) { /* 1234e7 -> 12340000000.0 */
      eddy_buf_append(b, d, (size_t)n);
      for (int k = n; k <= e; k++) eddy_buf_putc(b, '0');
      eddy_buf_puts(b, ".0");
    } else if (e >= 0) { /* 1234e-2 -> 12.34 */
      eddy_buf_append(b, d, (size_t)e + 1);
      eddy_buf_putc(b, '.');
      eddy_buf_append(b, d + e + 1, (size_t)(n - e - 1));
    } else { /* 1234e-6 -> 0.001234 */
      eddy_buf_puts(b, "0.");
      for (int k = -1; k > e; k--) eddy_buf_putc(b, '0');
      eddy_buf_append(b, d, (size_t)n);
    }
    return;
  }
  eddy_buf_putc(b, d[0]);
  if (n > 1) {
    eddy_buf_putc(b, '.');
    eddy_buf_append(b, d + 1, (size_t)n - 1);
  }
  char exp[8];
  snprintf(exp, sizeof exp, "e%c%d", e < 0 ? '-' : '+', e < 0 ? -e : e);
  eddy_buf_puts(b, exp);
}

/* Describes value `v` as serde_json does in "invalid type: X, expected Y"
 * (for example "integer `5`", "string \"x\"", "null", "map"). */
static inline void eddy_json_describe(eddy_json *j, const eddy_json_value *v, eddy_buf *out) {
  char num[32];
  switch (v->kind) {
    case EDDY_JSON_NULL: eddy_buf_puts(out, "null"); return;
    case EDDY_JSON_BOOL: eddy_buf_puts(out, v->boolean ? "boolean `true`" : "boolean `false`"); return;
    case EDDY_JSON_ARRAY: eddy_buf_puts(out, "sequence"); return;
    case EDDY_JSON_OBJECT: eddy_buf_puts(out, "map"); return;
    case EDDY_JSON_NUMBER:
      if (v->num == EDDY_NUM_U64) {
        snprintf(num, sizeof num, "integer `%llu`", (unsigned long long)v->u);
        eddy_buf_puts(out, num);
      } else if (v->num == EDDY_NUM_I64) {
        snprintf(num, sizeof num, "integer `%lld`", (long long)v->i);
        eddy_buf_puts(out, num);
      } else {
        eddy_buf_puts(out, "floating point `");
        eddy_json_write_f64(out, v->f);
        eddy_buf_putc(out, '`');
      }
      return;
    case EDDY_JSON_STRING: {
      eddy_buf s = {0};
      eddy_json_string(j, v, &s);
      eddy_buf_puts(out, "string \"");
      for (size_t k = 0; k < s.len; k++) {
        unsigned char c = s.ptr[k];
        char esc[12];
        if (c == '"' || c == '\\') {
          eddy_buf_putc(out, '\\'), eddy_buf_putc(out, (char)c);
        } else if (c == '\n') {
          eddy_buf_puts(out, "\\n");
        } else if (c == '\r') {
          eddy_buf_puts(out, "\\r");
        } else if (c == '\t') {
          eddy_buf_puts(out, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
          snprintf(esc, sizeof esc, "\\u{%x}", c);
          eddy_buf_puts(out, esc);
        } else {
          eddy_buf_putc(out, (char)c);
        }
      }
      eddy_buf_putc(out, '"');
      eddy_buf_free(&s);
      return;
    }
  }
}

/* Records "invalid type: <v>, expected <what>" at `v`, positioned as
 * serde_json positions it (after a scalar, at an array's or object's start). */
static inline void eddy_json_invalid_type(eddy_json *j, const eddy_json_value *v, const char *what) {
  eddy_buf d = {0};
  eddy_json_describe(j, v, &d);
  bool nested = v->kind == EDDY_JSON_ARRAY || v->kind == EDDY_JSON_OBJECT;
  eddy_json_fail(j, nested ? v->start : v->end, "invalid type: %s, expected %s", (char *)d.ptr, what);
  eddy_buf_free(&d);
}

/* Finds top-level field `name` of the JSON object `text`: 1 with its value
 * in `out` (the last one when repeated), 0 when missing or `text` is not an
 * object, -1 on malformed JSON. `j` is initialised here; free it after. */
static inline int eddy_json_field(eddy_json *j, const void *text, size_t len, const char *name, eddy_json_value *out) {
  eddy_json_init(j, text, len);
  if (!eddy_json_object_begin(j)) return 0;
  eddy_json_value k, v;
  int found = 0, r;
  while ((r = eddy_json_object_next(j, &k, &v)) == 1) {
    if (eddy_json_string_is(j, &k, name)) *out = v, found = 1;
  }
  return r < 0 ? -1 : found;
}

/* ---- config ---------------------------------------------------------------
 * Like the Rust SDK's Config::get: a field that is missing or null leaves
 * *out unset and returns NULL; one of the wrong type is an error naming it. */

static inline eddy_error eddy__config_field(const eddy_config *c, const char *field, eddy_json *j, eddy_json_value *v, bool *present) {
  *present = false;
  int r = eddy_json_field(j, c->json, c->len, field, v);
  if (r < 0) return eddy_json_error(j, "config is not JSON: ");
  *present = r == 1 && v->kind != EDDY_JSON_NULL;
  return NULL;
}
static inline eddy_error eddy__config_type(eddy_json *j, const eddy_json_value *v, const char *field, const char *what) {
  eddy_buf d = {0};
  eddy_json_describe(j, v, &d);
  eddy_error e = eddy_errorf("config field `%s`: invalid type: %s, expected %s", field, (char *)d.ptr, what);
  eddy_buf_free(&d);
  return e;
}

/* String field: *out becomes a malloc'd, NUL-terminated copy (free it). */
static inline eddy_error eddy_config_string(const eddy_config *c, const char *field, char **out) {
  eddy_json j;
  eddy_json_value v;
  bool present;
  eddy_error e = eddy__config_field(c, field, &j, &v, &present);
  if (!e && present) {
    if (v.kind != EDDY_JSON_STRING) {
      e = eddy__config_type(&j, &v, field, "a string");
    } else {
      eddy_buf s = {0};
      eddy_json_string(&j, &v, &s);
      eddy_buf_putc(&s, 0);
      *out = (char *)s.ptr;
    }
  }
  eddy_json_free(&j);
  return e;
}

/* Number field, as an f64. */
static inline eddy_error eddy_config_f64(const eddy_config *c, const char *field, double *out) {
  eddy_json j;
  eddy_json_value v;
  bool present;
  eddy_error e = eddy__config_field(c, field, &j, &v, &present);
  if (!e && present && !eddy_json_f64(&v, out)) e = eddy__config_type(&j, &v, field, "f64");
  eddy_json_free(&j);
  return e;
}

/* Integer field, as an i64. */
static inline eddy_error eddy_config_i64(const eddy_config *c, const char *field, int64_t *out) {
  eddy_json j;
  eddy_json_value v;
  bool present;
  eddy_error e = eddy__config_field(c, field, &j, &v, &present);
  if (!e && present) {
    if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_I64) {
      *out = v.i;
    } else if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64 && v.u <= INT64_MAX) {
      *out = (int64_t)v.u;
    } else if (v.kind == EDDY_JSON_NUMBER && v.num == EDDY_NUM_U64) {
      e = eddy_errorf("config field `%s`: invalid value: integer `%llu`, expected i64", field, (unsigned long long)v.u);
    } else {
      e = eddy__config_type(&j, &v, field, "i64");
    }
  }
  eddy_json_free(&j);
  return e;
}

/* ---- JSON writing ----------------------------------------------------------
 * Builds objects the way serde_json serializes a struct:
 *
 *     eddy_buf b = {0};
 *     eddy_jw_begin(&b);
 *     eddy_jw_u64(&b, "count", 3);
 *     eddy_jw_f64(&b, "sum", 15.5);
 *     eddy_jw_end(&b);               // {"count":3,"sum":15.5}
 *
 * eddy_jw_key + eddy_jw_begin nests an object as a field's value.
 */

/* Appends `s` (`n` bytes of UTF-8) as a JSON string, escaped like serde_json. */
static inline void eddy_json_write_string(eddy_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  eddy_buf_reserve(b, n + 2);
  eddy_buf_putc(b, '"');
  for (size_t k = 0; k < n; k++) {
    unsigned char c = (unsigned char)s[k];
    switch (c) {
      case '"': eddy_buf_puts(b, "\\\""); break;
      case '\\': eddy_buf_puts(b, "\\\\"); break;
      case '\b': eddy_buf_puts(b, "\\b"); break;
      case '\f': eddy_buf_puts(b, "\\f"); break;
      case '\n': eddy_buf_puts(b, "\\n"); break;
      case '\r': eddy_buf_puts(b, "\\r"); break;
      case '\t': eddy_buf_puts(b, "\\t"); break;
      default:
        if (c < 0x20) {
          char u[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
          eddy_buf_puts(b, u);
        } else {
          eddy_buf_putc(b, (char)c);
        }
    }
  }
  eddy_buf_putc(b, '"');
}

static inline void eddy_jw_begin(eddy_buf *b) { eddy_buf_putc(b, '{'); }
static inline void eddy_jw_end(eddy_buf *b) { eddy_buf_putc(b, '}'); }
/* Writes `"key":` (with the comma before it when needed). */
static inline void eddy_jw_key(eddy_buf *b, const char *key) {
  if (b->len && b->ptr[b->len - 1] != '{') eddy_buf_putc(b, ',');
  eddy_json_write_string(b, key, strlen(key));
  eddy_buf_putc(b, ':');
}
static inline void eddy_jw_str(eddy_buf *b, const char *key, const char *s, size_t n) {
  eddy_jw_key(b, key);
  eddy_json_write_string(b, s, n);
}
static inline void eddy_jw_cstr(eddy_buf *b, const char *key, const char *s) { eddy_jw_str(b, key, s, strlen(s)); }
static inline void eddy_jw_u64(eddy_buf *b, const char *key, uint64_t v) {
  char num[24];
  eddy_jw_key(b, key);
  eddy_buf_append(b, num, (size_t)eddy__u64_text(v, num));
}
static inline void eddy_jw_i64(eddy_buf *b, const char *key, int64_t v) {
  char num[24];
  eddy_jw_key(b, key);
  if (v < 0) eddy_buf_putc(b, '-');
  eddy_buf_append(b, num, (size_t)eddy__u64_text(v < 0 ? 0 - (uint64_t)v : (uint64_t)v, num));
}
static inline void eddy_jw_f64(eddy_buf *b, const char *key, double v) {
  eddy_jw_key(b, key);
  eddy_json_write_f64(b, v);
}
static inline void eddy_jw_bool(eddy_buf *b, const char *key, bool v) {
  eddy_jw_key(b, key);
  eddy_buf_puts(b, v ? "true" : "false");
}

/* ---- exporting an operator ------------------------------------------------ */

/* Makes host-allocated bytes (`owned`) or a copy of others a NUL-terminated
 * malloc'd string. */
static inline char *eddy__own(uint8_t *ptr, size_t len, bool owned) {
  char *s = owned && len ? realloc(ptr, len + 1) : malloc(len + 1);
  if (!s) abort();
  if (!owned && len) memcpy(s, ptr, len);
  s[len] = 0;
  return s;
}
static inline bool eddy__result(eddy_error e, operator_string_t *err) {
  if (!e) return true;
  if (!*e) {
    free(e);
    e = eddy_errorf("error");
  }
  err->ptr = (uint8_t *)e;
  err->len = strlen(e);
  return false;
}

#ifdef EDDY_HANDLE_BATCH
/* ---- the batched fast path: the loop --------------------------------------- */

/* Makes `s` an empty column and hands its buffers to `out` (the result
 * borrows them until the next batch). */
static inline eddy_operator_batch_strings_t eddy__column(eddy__strings *s) {
  return (eddy_operator_batch_strings_t){{s->bytes.ptr, s->bytes.len}, {s->ends.ptr, s->ends.len}};
}
static inline operator_list_u32_t eddy__list(eddy__u32s *l) { return (operator_list_u32_t){l->ptr, l->len}; }

/* Whether `s` is a well-formed column of `count` strings. */
static inline bool eddy__column_ok(const eddy_operator_batch_strings_t *s, size_t count) {
  if (s->ends.len != count) return false;
  uint32_t previous = 0;
  for (size_t i = 0; i < s->ends.len; i++) {
    if (s->ends.ptr[i] < previous) return false;
    previous = s->ends.ptr[i];
  }
  return previous == s->bytes.len;
}
#define EDDY__AT(col, i) ((i) ? (col).ends.ptr[(i)-1] : 0)

/* Checks what the host sent: a malformed batch is a host bug, answered with
 * `stop` (the host then handles the events per event). */
static inline bool eddy__batch_ok(const operator_batch_t *in) {
  size_t nkeys = in->keys.ends.len, nevents = in->event_keys.len, nvalues = 0;
  if (in->value_counts.len != nkeys) return false;
  for (size_t k = 0; k < nkeys; k++) {
    nvalues += in->value_counts.ptr[k];
    if (nvalues > in->value_names.ends.len) return false;
  }
  for (size_t i = 0; i < nevents; i++) {
    if (in->event_keys.ptr[i] >= nkeys) return false;
  }
  if (in->times.len != in->timed.len) return false;
  for (size_t t = 0; t < in->timed.len; t++) {
    if (in->timed.ptr[t] >= nevents || (t && in->timed.ptr[t] <= in->timed.ptr[t - 1])) return false;
  }
  return eddy__column_ok(&in->keys, nkeys) && eddy__column_ok(&in->value_names, nvalues) &&
         eddy__column_ok(&in->value_bytes, nvalues) && eddy__column_ok(&in->payloads, nevents);
}

/* Undoes the current event's writes to the batch's view of its key. */
static inline void eddy__undo_event(void) {
  eddy__batch *B = &eddy__B;
  eddy__values *v = &B->keys[B->current];
  while (B->nundo) {
    eddy__undo u = B->undo[--B->nundo];
    if (u.added) {
      v->n--; /* added slots are the last ones, undone last-first */
    } else {
      v->e[u.slot] = u.old;
    }
  }
}

/* Runs `handle` on every event of `in` into `ret`. */
static inline void eddy__run_batch(operator_batch_t *in, operator_batch_result_t *ret,
                                   eddy_error (*handle)(const eddy_event *)) {
  eddy__batch *B = &eddy__B;
  bool stop = false;
  B->emit_counts.len = B->write_counts.len = B->deletes.len = B->failed.len = 0;
  eddy__strings_truncate(&B->emit_keys, 0);
  eddy__strings_truncate(&B->emit_payloads, 0);
  eddy__strings_truncate(&B->write_names, 0);
  eddy__strings_truncate(&B->write_values, 0);
  eddy__strings_truncate(&B->reasons, 0);
  if (!eddy__batch_ok(in)) {
    eddy_log(EDDY_ERROR, "the host sent a malformed batch; handling it per event");
    stop = in->event_keys.len != 0;
    goto done;
  }
  size_t nkeys = in->keys.ends.len;
  if (B->keys_cap < nkeys) {
    B->keys = realloc(B->keys, nkeys * sizeof *B->keys);
    if (!B->keys) abort();
    memset(B->keys + B->keys_cap, 0, (nkeys - B->keys_cap) * sizeof *B->keys);
    B->keys_cap = nkeys;
  }
  B->nkeys = nkeys;
  B->input = in->value_bytes.bytes.ptr;
  eddy_buf_clear(&B->arena);
  eddy_buf_clear(&B->key_text);
  B->key_at.len = 0;
  for (size_t k = 0, j = 0; k < nkeys; k++) {
    eddy__values *v = &B->keys[k];
    uint32_t count = in->value_counts.ptr[k];
    v->n = 0;
    if (v->cap < count) {
      v->cap = count;
      v->e = realloc(v->e, count * sizeof *v->e);
      if (!v->e) abort();
    }
    for (uint32_t c = 0; c < count; c++, j++) {
      uint32_t a = EDDY__AT(in->value_names, j), b = EDDY__AT(in->value_bytes, j);
      v->e[v->n++] = (eddy__entry){eddy__name(in->value_names.bytes.ptr + a, in->value_names.ends.ptr[j] - a),
                                   EDDY__INPUT, b, in->value_bytes.ends.ptr[j] - b};
    }
    uint32_t a = EDDY__AT(in->keys, k);
    eddy__u32s_push(&B->key_at, (uint32_t)B->key_text.len);
    eddy_buf_append(&B->key_text, in->keys.bytes.ptr + a, in->keys.ends.ptr[k] - a);
    eddy_buf_putc(&B->key_text, 0);
  }
  B->active = true;
  size_t t = 0; /* event `timed[t]` is the next with a time (`times[t]`) */
  for (size_t i = 0; i < in->event_keys.len; i++) {
    uint32_t k = in->event_keys.ptr[i];
    B->current = k;
    eddy_event ev;
    ev.key = (const char *)B->key_text.ptr + B->key_at.ptr[k];
    ev.key_len = in->keys.ends.ptr[k] - EDDY__AT(in->keys, k);
    uint32_t p = EDDY__AT(in->payloads, i);
    eddy_buf_clear(&B->scratch);
    eddy_buf_append(&B->scratch, in->payloads.bytes.ptr + p, in->payloads.ends.ptr[i] - p);
    if (!B->scratch.ptr) eddy_buf_reserve(&B->scratch, 0), B->scratch.ptr[0] = 0;
    ev.value = B->scratch.ptr;
    ev.value_len = B->scratch.len;
    ev.has_time = t < in->timed.len && in->timed.ptr[t] == i;
    ev.time = ev.has_time ? in->times.ptr[t++] : 0;
    size_t emit_mark = B->emit_keys.ends.len;
    eddy_error e = handle(&ev);
    if (B->stop || e) {
      /* Nothing of the event takes effect. */
      eddy__undo_event();
      B->touched.len = 0;
      eddy__strings_truncate(&B->emit_keys, emit_mark);
      eddy__strings_truncate(&B->emit_payloads, emit_mark);
      if (B->stop) {
        free(e);
        B->stop = false;
        stop = true;
        break;
      }
      eddy__u32s_push(&B->failed, (uint32_t)i);
      if (*e) {
        eddy__strings_push(&B->reasons, e, strlen(e));
      } else {
        eddy__strings_push(&B->reasons, "error", 5);
      }
      free(e);
      eddy__u32s_push(&B->emit_counts, 0);
      eddy__u32s_push(&B->write_counts, 0);
      continue;
    }
    B->nundo = 0;
    eddy__u32s_push(&B->emit_counts, (uint32_t)(B->emit_keys.ends.len - emit_mark));
    eddy__u32s_push(&B->write_counts, (uint32_t)B->touched.len);
    eddy__values *v = &B->keys[k];
    for (size_t t = 0; t < B->touched.len; t++) {
      eddy__entry x = v->e[B->touched.ptr[t]];
      eddy__strings_push(&B->write_names, B->names[x.name].s, B->names[x.name].len);
      if (x.where == EDDY__DELETED) {
        eddy__u32s_push(&B->deletes, (uint32_t)B->write_values.ends.len);
        eddy__strings_push(&B->write_values, "", 0);
      } else {
        eddy__strings_push(&B->write_values, B->arena.ptr + x.off, x.len);
      }
    }
    B->touched.len = 0;
  }
  B->active = false;
done:
  ret->emit_counts = eddy__list(&B->emit_counts);
  ret->write_counts = eddy__list(&B->write_counts);
  ret->emit_keys = eddy__column(&B->emit_keys);
  ret->emit_payloads = eddy__column(&B->emit_payloads);
  ret->write_names = eddy__column(&B->write_names);
  ret->write_values = eddy__column(&B->write_values);
  ret->deletes = eddy__list(&B->deletes);
  ret->failed = eddy__list(&B->failed);
  ret->reasons = eddy__column(&B->reasons);
  ret->stop = stop;
  operator_batch_free(in);
}

/* The result's buffers stay eddy.h's, reused by the next batch: this
 * replaces the bindings' post-return function (weak, so that it can be),
 * which would free them. */
#define EDDY__EXPORT_BATCH(handle_fn)                                              \
  void exports_operator_handle_batch(operator_batch_t *batch, operator_batch_result_t *ret) { \
    eddy__run_batch(batch, ret, handle_fn);                                        \
  }                                                                                \
  __attribute__((__export_name__("cabi_post_handle-batch")))                       \
  void __wasm_export_exports_operator_handle_batch_post_return(uint8_t *ret) { (void)ret; }
#else
#define EDDY__EXPORT_BATCH(handle_fn)
#endif

#ifdef EDDY_ON_TIMER
/* `on-timer`: calls eddy_on_timer, or fails naming the timer when the
 * operator defines none. */
#define EDDY__EXPORT_ON_TIMER                                                      \
  bool exports_operator_on_timer(operator_string_t *key, operator_string_t *name, int64_t at, \
                                 operator_string_t *err) {                         \
    eddy_timer t;                                                                  \
    t.key_len = key->len;                                                          \
    t.key = eddy__own(key->ptr, key->len, true);                                   \
    t.name_len = name->len;                                                        \
    t.name = eddy__own(name->ptr, name->len, true);                                \
    t.at = at;                                                                     \
    eddy_error e = eddy_on_timer                                                   \
        ? eddy_on_timer(&t)                                                        \
        : eddy_errorf("timer `%s` of key `%s` fired, but this operator does not handle " \
                      "timers (define `eddy_error eddy_on_timer(const eddy_timer *)`)", \
                      t.name, t.key);                                              \
    free((char *)t.key);                                                           \
    free((char *)t.name);                                                          \
    return eddy__result(e, err);                                                   \
  }
#else
#define EDDY__EXPORT_ON_TIMER
#endif

#ifdef EDDY_WINDOW
#define EDDY_EXPORT_OPERATOR(init_fn, handle_fn)                                   \
  _Static_assert(0, "built for world window-operator: export a window aggregate with " \
                    "EDDY_EXPORT_WINDOW, or build a keyed operator for another world");
#else
/* Exports `init_fn` and `handle_fn` as the operator's `init` and `handle`
 * (and `handle-batch` and `on-timer` when the world has them).
 * Use once, in one source file. Empty config text counts as `{}`; config
 * text that is not JSON is refused before `init_fn` runs. */
#define EDDY_EXPORT_OPERATOR(init_fn, handle_fn)                                   \
  bool exports_operator_init(operator_string_t *config, operator_string_t *err) {  \
    eddy_config c;                                                                 \
    c.len = config->len;                                                           \
    c.json = eddy__own(config->ptr, config->len, true);                                  \
    eddy_json j;                                                                   \
    eddy_json_value v;                                                             \
    eddy_json_init(&j, c.json, c.len);                                             \
    eddy__ws(&j);                                                                  \
    eddy_error e = NULL;                                                           \
    if (j.pos == j.len) {                                                          \
      free((char *)c.json);                                                        \
      c.json = eddy__own((uint8_t *)"{}", 2, false);                               \
      c.len = 2;                                                                   \
    } else if (!eddy_json_next_value(&j, &v) || !eddy_json_end(&j)) {              \
      e = eddy_json_error(&j, "config is not JSON: ");                             \
    }                                                                              \
    eddy_json_free(&j);                                                            \
    if (!e) e = init_fn(&c);                                                       \
    free((char *)c.json);                                                          \
    return eddy__result(e, err);                                                   \
  }                                                                                \
  bool exports_operator_handle(operator_event_t *event, operator_string_t *err) {  \
    eddy_event ev;                                                                 \
    ev.key_len = event->key.len;                                                   \
    ev.key = eddy__own(event->key.ptr, event->key.len, true);                            \
    ev.value_len = event->value.len;                                               \
    ev.value = (const uint8_t *)eddy__own(event->value.ptr, event->value.len, true);     \
    ev.has_time = event->time.is_some;                                             \
    ev.time = event->time.val;                                                     \
    eddy_error e = handle_fn(&ev);                                                 \
    free((char *)ev.key);                                                          \
    free((char *)ev.value);                                                        \
    return eddy__result(e, err);                                                   \
  }                                                                                \
  EDDY__EXPORT_BATCH(handle_fn)                                                    \
  EDDY__EXPORT_ON_TIMER
#endif /* EDDY_WINDOW */

/* ---- window aggregates ------------------------------------------------------
 *
 * An operator declared a window in the pipeline file (`window = { kind =
 * "tumbling", size = 60000 }`, or "hopping", "session") is an aggregate:
 * the host assigns events to windows, keeps one accumulator per key and
 * pane (or session), fires each window once the watermark reaches its end
 * and emits what `finish` returns under the window's key. You write the
 * aggregate over an accumulator type of your own, a plain struct (copied by
 * value: it must own no memory), and its JSON encoding (how the host
 * stores it):
 *
 *     typedef struct { uint64_t count; double sum; } totals;
 *
 *     eddy_error my_init(const eddy_config *config);        // once
 *     void my_create(totals *acc);                          // the empty one
 *     eddy_error my_add(totals *acc, const eddy_window_event *event);
 *     eddy_error my_merge(totals *into, const totals *other);
 *     eddy_error my_finish(const eddy_window *w, const totals *acc, eddy_buf *out);
 *     eddy_error my_decode(totals *acc, const uint8_t *json, size_t len);
 *     void my_encode(const totals *acc, eddy_buf *out);
 *
 *     EDDY_EXPORT_WINDOW(totals, my_init, my_create, my_add, my_merge,
 *                        my_finish, my_decode, my_encode)
 *
 * and build it with `eddy build` (a source that uses EDDY_EXPORT_WINDOW is
 * built for world `window-operator`, which defines EDDY_WINDOW: the state, emit and timer functions are then left out, as
 * the world has none of them). `add` folds an event into an accumulator;
 * an error dead-letters the event, and the accumulator is put back as it
 * was before it. `merge` merges `other` into `into` (a hopping window's
 * panes, oldest first, or the sessions an event bridges). `finish` writes
 * what window `w` emits into `out` (left empty: nothing is emitted); an
 * error dead-letters the firing. `decode` reads an accumulator that
 * `encode` wrote (an error there fails the events of that accumulator).
 * Each `add` call decodes and encodes every accumulator it is handed once,
 * however many events it folds into it.
 */

/* An event being folded into its window: its payload (not NUL-terminated;
 * read it with the eddy_json_* functions, which take a length) and event
 * time. */
typedef struct {
  const uint8_t *value;
  size_t value_len;
  int64_t time;
} eddy_window_event;

/* A window being finished. `key` is NUL-terminated. */
typedef struct {
  const char *key;  /* what it emits goes out under this key */
  size_t key_len;
  int64_t start;    /* its first event time (inclusive); a session's first event's */
  int64_t end;      /* its end (exclusive); a session's last event's time plus the gap */
} eddy_window;

#ifdef EDDY_WINDOW
/* An aggregate's functions over accumulators of `size` bytes. */
typedef struct {
  size_t size;
  void (*create)(void *acc);
  eddy_error (*add)(void *acc, const eddy_window_event *event);
  eddy_error (*merge)(void *into, const void *other);
  eddy_error (*finish)(const eddy_window *w, const void *acc, eddy_buf *out);
  eddy_error (*decode)(void *acc, const uint8_t *json, size_t len);
  void (*encode)(const void *acc, eddy_buf *out);
} eddy__aggregate;

/* Whether `s` is a well-formed column of strings. */
static inline bool eddy__window_column_ok(const operator_strings_t *s) {
  uint32_t previous = 0;
  for (size_t i = 0; i < s->ends.len; i++) {
    if (s->ends.ptr[i] < previous) return false;
    previous = s->ends.ptr[i];
  }
  return previous == s->bytes.len;
}
#define EDDY__WAT(col, i) ((i) ? (col).ends.ptr[(i)-1] : 0)

/* Accumulator `i` of `col` decoded into `acc`. */
static inline eddy_error eddy__window_decode(const eddy__aggregate *A, const operator_strings_t *col,
                                             size_t i, void *acc) {
  uint32_t at = EDDY__WAT(*col, i);
  eddy_error e = A->decode(acc, col->bytes.ptr + at, col->ends.ptr[i] - at);
  if (!e) return NULL;
  eddy_error wrapped = eddy_errorf("a window accumulator does not decode: %s", e);
  free(e);
  return wrapped;
}

/* `add`: folds the events of `in` (wit/window.wit) into their
 * accumulators, each decoded and encoded once. */
static inline void eddy__window_add(const eddy__aggregate *A, operator_adds_t *in, operator_added_t *ret) {
  size_t n = in->accumulators.ends.len, nevents = in->targets.len;
  /* A malformed call is a host bug: trap (the host replays it per event). */
  if (!eddy__window_column_ok(&in->accumulators) || !eddy__window_column_ok(&in->payloads) ||
      in->payloads.ends.len != nevents || in->times.len != nevents)
    abort();
  uint8_t *accs = malloc((n ? n : 1) * A->size);
  uint8_t *before = malloc(A->size);
  char **broken = calloc(n ? n : 1, sizeof *broken); /* why accumulator i does not decode */
  if (!accs || !before || !broken) abort();
  size_t f = 0;
  for (size_t i = 0; i < n; i++) {
    while (f < in->fresh.len && in->fresh.ptr[f] < i) f++;
    if (f < in->fresh.len && in->fresh.ptr[f] == i) {
      A->create(accs + i * A->size);
    } else {
      broken[i] = eddy__window_decode(A, &in->accumulators, i, accs + i * A->size);
    }
  }
  eddy__u32s failed = {0};
  eddy__strings reasons = {0};
  for (size_t k = 0; k < nevents; k++) {
    uint32_t t = in->targets.ptr[k];
    eddy_error e;
    if (t >= n) {
      e = eddy_errorf("event %zu: no accumulator %u", k, (unsigned)t);
    } else if (broken[t]) {
      e = eddy_errorf("%s", broken[t]);
    } else {
      uint32_t at = EDDY__WAT(in->payloads, k);
      eddy_window_event ev = {in->payloads.bytes.ptr + at, in->payloads.ends.ptr[k] - at, in->times.ptr[k]};
      void *acc = accs + (size_t)t * A->size;
      memcpy(before, acc, A->size);
      e = A->add(acc, &ev);
      if (e) memcpy(acc, before, A->size); /* left out: as it was before the event */
    }
    if (e) {
      eddy__u32s_push(&failed, (uint32_t)k);
      eddy__strings_push(&reasons, *e ? e : "error", *e ? strlen(e) : 5);
      free(e);
    }
  }
  eddy__strings out = {0};
  eddy_buf one = {0};
  for (size_t i = 0; i < n; i++) {
    if (broken[i]) {
      /* Handed back as it came. */
      uint32_t at = EDDY__WAT(in->accumulators, i);
      eddy__strings_push(&out, in->accumulators.bytes.ptr + at, in->accumulators.ends.ptr[i] - at);
      free(broken[i]);
    } else {
      eddy_buf_clear(&one);
      A->encode(accs + i * A->size, &one);
      eddy__strings_push(&out, one.ptr, one.len);
    }
  }
  eddy_buf_free(&one);
  free(broken);
  free(before);
  free(accs);
  operator_adds_free(in);
  /* Malloc'd: the bindings' post-return function frees them. */
  ret->accumulators = (operator_strings_t){{out.bytes.ptr, out.bytes.len}, {out.ends.ptr, out.ends.len}};
  ret->failed = (operator_list_u32_t){failed.ptr, failed.len};
  ret->reasons = (operator_strings_t){{reasons.bytes.ptr, reasons.bytes.len}, {reasons.ends.ptr, reasons.ends.len}};
}

/* The accumulators of `col` merged into `acc`, oldest first (none: the
 * empty accumulator). */
static inline eddy_error eddy__window_merged(const eddy__aggregate *A, operator_strings_t *col, void *acc) {
  if (!eddy__window_column_ok(col)) return eddy_errorf("the host sent a malformed list of accumulators");
  size_t n = col->ends.len;
  if (n == 0) {
    A->create(acc);
    return NULL;
  }
  eddy_error e = eddy__window_decode(A, col, 0, acc);
  void *other = malloc(A->size);
  if (!other) abort();
  for (size_t i = 1; i < n && !e; i++) {
    e = eddy__window_decode(A, col, i, other);
    if (!e) e = A->merge(acc, other);
  }
  free(other);
  return e;
}

static inline bool eddy__window_merge(const eddy__aggregate *A, operator_strings_t *col, operator_list_u8_t *ret,
                                      operator_string_t *err) {
  void *acc = malloc(A->size);
  if (!acc) abort();
  eddy_error e = eddy__window_merged(A, col, acc);
  if (!e) {
    eddy_buf b = {0};
    A->encode(acc, &b);
    *ret = (operator_list_u8_t){b.ptr, b.len};
  }
  free(acc);
  operator_strings_free(col);
  return eddy__result(e, err);
}

static inline bool eddy__window_finish(const eddy__aggregate *A, operator_bounds_t *bounds, operator_strings_t *col,
                                       operator_option_list_u8_t *ret, operator_string_t *err) {
  void *acc = malloc(A->size);
  if (!acc) abort();
  eddy_error e = eddy__window_merged(A, col, acc);
  ret->is_some = false;
  if (!e) {
    eddy_window w;
    w.key_len = bounds->key.len;
    w.key = eddy__own(bounds->key.ptr, bounds->key.len, false);
    w.start = bounds->start;
    w.end = bounds->end;
    eddy_buf out = {0};
    e = A->finish(&w, acc, &out);
    if (!e && out.len) {
      ret->is_some = true;
      ret->val = (operator_list_u8_t){out.ptr, out.len};
    } else {
      eddy_buf_free(&out);
    }
    free((char *)w.key);
  }
  free(acc);
  operator_bounds_free(bounds);
  operator_strings_free(col);
  return eddy__result(e, err);
}

/* Exports a window aggregate over accumulator type `acc_type` (see above).
 * Use once, in one source file; `eddy build` then builds for world
 * `window-operator`. Config text that is not JSON is refused before
 * `init_fn` runs (empty text counts as `{}`). */
#define EDDY_EXPORT_WINDOW(acc_type, init_fn, create_fn, add_fn, merge_fn, finish_fn, decode_fn, encode_fn) \
  static void eddy__w_create(void *a) { create_fn((acc_type *)a); }                \
  static eddy_error eddy__w_add(void *a, const eddy_window_event *e) { return add_fn((acc_type *)a, e); } \
  static eddy_error eddy__w_merge(void *a, const void *b) {                        \
    return merge_fn((acc_type *)a, (const acc_type *)b);                           \
  }                                                                                \
  static eddy_error eddy__w_finish(const eddy_window *w, const void *a, eddy_buf *out) { \
    return finish_fn(w, (const acc_type *)a, out);                                 \
  }                                                                                \
  static eddy_error eddy__w_decode(void *a, const uint8_t *json, size_t len) {     \
    return decode_fn((acc_type *)a, json, len);                                    \
  }                                                                                \
  static void eddy__w_encode(const void *a, eddy_buf *out) { encode_fn((const acc_type *)a, out); } \
  static const eddy__aggregate eddy__window_aggregate = {                          \
      sizeof(acc_type), eddy__w_create, eddy__w_add, eddy__w_merge,                \
      eddy__w_finish, eddy__w_decode, eddy__w_encode};                             \
  bool exports_operator_init(operator_string_t *config, operator_string_t *err) {  \
    eddy_config c;                                                                 \
    c.len = config->len;                                                           \
    c.json = eddy__own(config->ptr, config->len, true);                            \
    eddy_json j;                                                                   \
    eddy_json_value v;                                                             \
    eddy_json_init(&j, c.json, c.len);                                             \
    eddy__ws(&j);                                                                  \
    eddy_error e = NULL;                                                           \
    if (j.pos == j.len) {                                                          \
      free((char *)c.json);                                                        \
      c.json = eddy__own((uint8_t *)"{}", 2, false);                               \
      c.len = 2;                                                                   \
    } else if (!eddy_json_next_value(&j, &v) || !eddy_json_end(&j)) {              \
      e = eddy_json_error(&j, "config is not JSON: ");                             \
    }                                                                              \
    eddy_json_free(&j);                                                            \
    if (!e) e = init_fn(&c);                                                       \
    free((char *)c.json);                                                          \
    return eddy__result(e, err);                                                   \
  }                                                                                \
  void exports_operator_add(operator_adds_t *adds, operator_added_t *ret) {        \
    eddy__window_add(&eddy__window_aggregate, adds, ret);                          \
  }                                                                                \
  bool exports_operator_merge(operator_strings_t *accumulators, operator_list_u8_t *ret, \
                              operator_string_t *err) {                            \
    return eddy__window_merge(&eddy__window_aggregate, accumulators, ret, err);    \
  }                                                                                \
  bool exports_operator_finish(operator_bounds_t *window, operator_strings_t *accumulators, \
                               operator_option_list_u8_t *ret, operator_string_t *err) { \
    return eddy__window_finish(&eddy__window_aggregate, window, accumulators, ret, err); \
  }
#else
#define EDDY_EXPORT_WINDOW(...)                                                    \
  _Static_assert(0, "EDDY_EXPORT_WINDOW needs world window-operator: build with " \
                    "`eddy build --world window-operator`");
#endif /* EDDY_WINDOW */

#endif /* EDDY_H */
