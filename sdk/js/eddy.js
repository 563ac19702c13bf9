// Eddy operators in JavaScript: a thin SDK over the eddy:operator@0.3.0
// contract, the JavaScript counterpart of the Rust SDK (sdk/rust/src/lib.rs).
//
//   import { operator, Value, List, emit, struct } from '../eddy.js';
//
//   const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
//   const TOTALS = Value('totals', Totals);
//
//   export const { init, handle } = operator({
//     init(config) { return { field: config.get('field', 'string') ?? 'amount' }; },
//     handle(event, settings) { ... TOTALS.set(t); emit(event.key, t, Totals); },
//   });
//
// Timers: `timers.set('delay', event.time + gap)` in `handle`, and an
// `onTimer(timer, settings)` next to `handle` in `operator({...})`, called
// with `timer.key`, `timer.name` and `timer.at` once the watermark passes it.
//
// Window aggregates (world `window-operator`) import `aggregate` from
// eddy-window.js instead: this module imports the keyed operator's host
// interfaces (state, output, timers), which that world has not.
//
// State and emitted values are JSON, written exactly as serde_json writes the
// same Rust types, so JavaScript and Rust operators can read each other's
// state and produce the same output bytes. JavaScript has one number type,
// so a "shape" says what Rust would have: see `struct` and the shape strings
// in eddy-json.js. Shapes also validate JSON on the way in, with serde_json's error
// messages.

import * as state from 'eddy:operator/state@0.3.0';
import { emit as hostEmit } from 'eddy:operator/output@0.3.0';
import * as hostTimers from 'eddy:operator/timers@0.3.0';
import {
  Config, Event, JsonError, OperatorError, parseJson,
  encode, encodeText, reason, toBytes, utf8Decoder, utf8Encoder, write,
} from './eddy-json.js';

// Shapes, JSON, errors, logging, events and config live in eddy-json.js,
// which window aggregates (eddy-window.js) share.
export {
  Config, Event, F64, JsonError, OperatorError, f64, formatFloat, log, parseJson, struct, toJson,
} from './eddy-json.js';

// ---------------------------------------------------------------------------
// State handles (act on the key of the event being handled)

function decode(name, bytes, shape) {
  try {
    return parseJson(bytes, shape);
  } catch (e) {
    if (e instanceof JsonError) throw new OperatorError(`state ${name} does not decode: ${e.message}`);
    throw e;
  }
}

class ValueHandle {
  constructor(name, shape) {
    this.name = name;
    this.shape = shape;
  }
  /** The current key's value, or null when it has none. */
  get() {
    // In a batch: the stored value as text (or bytes), or the JSON text
    // written by an earlier event of the batch.
    const data = batch === null ? state.get(this.name) : batch.get(this.name);
    return data == null ? null : decode(this.name, data, this.shape);
  }
  /** Stores `value` for the current key. */
  set(value) {
    if (batch === null) state.set(this.name, encode(this.name, value, this.shape));
    else batch.set(this.name, encodeText(this.name, value, this.shape));
  }
  /** Removes the value; returns whether there was one. */
  delete() {
    return batch === null ? state.delete(this.name) : batch.delete(this.name);
  }
  /** Reads the value (or `initial`), applies `f`, stores and returns the result. */
  update(f, initial) {
    const cur = this.get();
    const next = f(cur ?? initial);
    this.set(next);
    return next;
  }
}

class MapHandle {
  constructor(name, shape) {
    this.name = name;
    this.shape = shape;
  }
  /** The value of `field`, or null when missing. */
  get(field) {
    if (batch !== null) batch.stop();
    const bytes = state.mapGet(this.name, field);
    return bytes == null ? null : decode(this.name, bytes, this.shape);
  }
  /** Sets `field` to `value`. */
  set(field, value) {
    if (batch !== null) batch.stop();
    state.mapSet(this.name, field, encode(this.name, value, this.shape));
  }
  /** Removes `field`; returns whether it existed. */
  delete(field) {
    if (batch !== null) batch.stop();
    return state.mapDelete(this.name, field);
  }
  /**
   * At most `limit` [field, value] pairs from field `start` on (inclusive;
   * "" for the first field), sorted by field. Only those are read,
   * whatever the map's size: the next page starts at `field + "\0"` after
   * the last field returned.
   */
  range(start = "", limit = 100) {
    if (batch !== null) batch.stop();
    return state.mapRange(this.name, start, limit).map(([k, bytes]) => [k, decode(this.name, bytes, this.shape)]);
  }
  /** All [field, value] pairs, sorted by field (every field is read: page through a big map with `range`). */
  entries() {
    if (batch !== null) batch.stop();
    return state.mapEntries(this.name).map(([k, bytes]) => [k, decode(this.name, bytes, this.shape)]);
  }
  /** The number of fields. */
  len() {
    if (batch !== null) batch.stop();
    return state.mapLen(this.name);
  }
}

const U32_MAX = 4294967295;

class ListHandle {
  constructor(name, shape) {
    this.name = name;
    this.shape = shape;
  }
  /** Appends `item`; returns the new length. */
  push(item) {
    if (batch !== null) batch.stop();
    return state.listPush(this.name, encode(this.name, item, this.shape));
  }
  /** The number of items. */
  len() {
    if (batch !== null) batch.stop();
    return state.listLen(this.name);
  }
  /** Items with index in [start, end) (clamped), oldest first. */
  range(start, end = U32_MAX) {
    if (batch !== null) batch.stop();
    return state.listRange(this.name, start, end).map((bytes) => decode(this.name, bytes, this.shape));
  }
  /** All items, oldest first. */
  all() {
    return this.range(0, U32_MAX);
  }
  /** The newest `n` items, oldest first. */
  last(n) {
    const len = this.len();
    return this.range(Math.max(0, len - n), len);
  }
  /** Keeps only the newest `keep` items; returns how many were dropped. */
  trim(keep) {
    if (batch !== null) batch.stop();
    return state.listTrim(this.name, keep);
  }
}

/** A single value per key: `const COUNT = Value('count', 'u64')`. */
export function Value(name, shape = 'any') {
  return new ValueHandle(name, shape);
}
/** A map of string fields to values per key (named so as not to shadow the global Map). */
function stateMap(name, shape = 'any') {
  return new MapHandle(name, shape);
}
export { stateMap as Map, stateMap as StateMap };
/** An append-only list per key, oldest first. */
export function List(name, shape = 'any') {
  return new ListHandle(name, shape);
}

/** Removes all state of the current key for this operator. */
export function clearKey() {
  if (batch !== null) batch.stop();
  state.clear();
}

// ---------------------------------------------------------------------------
// Output

/** Emits `value` as JSON (written as `shape`), keyed by `key`. */
export function emit(key, value, shape) {
  if (batch === null) hostEmit(key, encode('emitted value', value, shape));
  else batch.emit(key, encodeText('emitted value', value, shape));
}

/** Emits raw payload bytes (a Uint8Array, or a string sent as UTF-8). */
export function emitRaw(key, bytes) {
  if (batch === null) hostEmit(key, toBytes(bytes));
  else batch.emit(key, toBytes(bytes));
}

// ---------------------------------------------------------------------------
// Timers

// componentize-js 0.23 hands s64 values over as unsigned (-5 arrives as
// 2^64 - 5): reinterpret them as signed.
function s64(x) {
  return BigInt.asIntN(64, BigInt(x));
}

/** An event time given to `timers.set`, as a signed 64-bit BigInt. */
function eventTime(at, name) {
  if (typeof at === 'bigint') {
    if (at >= -(2n ** 63n) && at < 2n ** 63n) return at;
  } else if (Number.isSafeInteger(at)) {
    return BigInt(at);
  }
  throw new OperatorError(`timers.set(${JSON.stringify(String(name))}): the time must be an integer of at most 64 bits (a BigInt or a safe integer), got ${typeof at === 'bigint' ? at : JSON.stringify(at) ?? String(at)}`);
}

/**
 * Named event-time timers of the current key, and the watermark
 * (`wit/timers.wit`). A name holds one pending time: a timeout is
 * `timers.set('timeout', t)`, and setting it again replaces it. Once the
 * watermark (the largest event time read so far minus the pipeline's
 * `max_out_of_order`) is past `t`, or a file input has ended, the host calls
 * the `onTimer(timer, settings)` given to `operator()`. Timer changes, like
 * state writes, take effect only when the call that made them succeeds.
 * Times are BigInts (as `event.time`); `set` also takes a safe integer.
 *
 * Timer calls are served on the per-event path: during a batch they hand the
 * event to it, as map and list calls do.
 */
export const timers = {
  /** Sets timer `name` of the current key to fire at event time `at`,
   * replacing the pending one of that name. A time the watermark already
   * passed fires at its next advance. */
  set(name, at) {
    if (batch !== null) batch.stop();
    hostTimers.set(String(name), eventTime(at, name));
  },
  /** Cancels timer `name`; returns whether one was pending. */
  clear(name) {
    if (batch !== null) batch.stop();
    return hostTimers.clear(String(name));
  },
  /** When timer `name` of the current key fires (a BigInt), or null when
   * none is pending. */
  get(name) {
    if (batch !== null) batch.stop();
    const at = hostTimers.get(String(name));
    return at == null ? null : s64(at);
  },
  /** Every pending timer of the current key as `[name, at]` pairs, sorted
   * by name. */
  list() {
    if (batch !== null) batch.stop();
    return hostTimers.list().map((t) => [t.name, s64(t.at)]);
  },
  /** The watermark (a BigInt): every event that is not late has a time at
   * least this. -(2^63) before the first event with a time (and when the
   * pipeline names no time field), 2^63 - 1 once a file input ended. */
  watermark() {
    if (batch !== null) batch.stop();
    return s64(hostTimers.watermark());
  },
  /** Whether the event being handled is late: only ever true under
   * `[source.watermark] late = "deliver"`, in `handle` of the first
   * operator (a late event is never in a batch). */
  late() {
    if (batch !== null) return false;
    return hostTimers.late();
  },
};

/** A timer that fired, as `onTimer(timer, settings)` receives it. */
export class Timer {
  constructor(key, name, at) {
    /** The key it belongs to: state, timer and emit calls act on it. */
    this.key = key;
    /** Its name. */
    this.name = name;
    /** The event time it was set for (a BigInt; the watermark is past it). */
    this.at = at;
  }
}

/** What `operator()` defined, for `onTimer`: `ready()` once `init`
 * succeeded, and `onTimer(timer)` (null when the operator has none). */
let timerOperator = null;

/**
 * The component's `on-timer` export. `eddy build` exports it next to the
 * operator module's `init` and `handle` (world `batched-timer-operator` or
 * `timer-operator`); it runs the `onTimer` given to `operator()`, and fails
 * naming the timer when there is none.
 */
export function onTimer(key, name, at) {
  if (timerOperator !== null && !timerOperator.ready()) throw 'on-timer called before init';
  if (timerOperator === null || timerOperator.onTimer === null) {
    throw `timer \`${name}\` of key \`${key}\` fired, but this operator does not handle timers (give \`operator()\` an \`onTimer(timer, settings)\`)`;
  }
  try {
    timerOperator.onTimer(new Timer(key, name, s64(at)));
  } catch (e) {
    throw reason(e);
  }
}

// ---------------------------------------------------------------------------
// The batched fast path (`handle-batch`)
//
// The host hands the operator many events at once, with the single values
// of their keys; `handleBatch` runs the operator's `handle` on each, serving
// `Value` reads from the batch (with the writes of earlier events of the
// batch) and buffering writes and emits per event, and returns them all in
// one result. As in the Rust SDK: an event that throws gets a `failed`
// outcome and none of its writes or emits; an event that uses a map, a list
// or `clearKey` gets `stop` (the batch carries only single values): the host
// then handles it and the rest with `handle`, where those calls go to it.

/** Thrown by map, list and clearKey calls during a batch. */
class StopSignal {}
const STOP_SIGNAL = new StopSignal();

/** The running batch, or null (state calls go to the host). */
let batch = null;

/** A growing list of u32 (a `list<u32>` column of the result). */
class U32s {
  constructor(capacity) {
    this.a = new Uint32Array(Math.max(16, capacity));
    this.n = 0;
  }
  push(v) {
    if (this.n === this.a.length) {
      const grown = new Uint32Array(this.a.length * 2);
      grown.set(this.a);
      this.a = grown;
    }
    this.a[this.n++] = v;
  }
  column() {
    return this.a.subarray(0, this.n);
  }
}

/**
 * A `strings` column of the result, kept as its pieces: JSON text written
 * by the SDK, keys and names as strings, `emitRaw` payloads as bytes. The
 * column's buffer is made when the batch ends, with one TextEncoder call
 * for all its text when it is ASCII (then a character is a byte and the
 * ends are the pieces' lengths); piece by piece otherwise. In
 * StarlingMonkey a native call costs about what a few JavaScript
 * statements do, so one call per column beats one per piece.
 */
class Column {
  constructor() {
    this.parts = [];
    this.text = true; // every piece is a string
  }
  push(part) {
    if (typeof part !== 'string') this.text = false;
    this.parts.push(part);
  }
  /** Drops the pieces from index `count` on. */
  truncate(count) {
    this.parts.length = count;
  }
  column() {
    const parts = this.parts;
    const n = parts.length;
    const ends = new Uint32Array(n);
    if (this.text) {
      const joined = parts.join('');
      const bytes = utf8Encoder.encode(joined);
      if (bytes.length === joined.length) {
        let end = 0;
        for (let i = 0; i < n; i++) ends[i] = end += parts[i].length;
        return { bytes, ends };
      }
    }
    const pieces = new Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      const p = parts[i];
      const b = typeof p === 'string' ? utf8Encoder.encode(p) : p;
      pieces[i] = b;
      ends[i] = total += b.length;
    }
    const bytes = new Uint8Array(total);
    for (let i = 0, at = 0; i < n; i++) {
      bytes.set(pieces[i], at);
      at += pieces[i].length;
    }
    return { bytes, ends };
  }
}

/** String `i` of a `strings` column of the batch (a view, not a copy). */
function stringAt(column, i) {
  return column.bytes.subarray(i === 0 ? 0 : column.ends[i - 1], column.ends[i]);
}

/**
 * A `strings` column of the batch as one string when it is ASCII (one
 * native call; the byte offsets are then string offsets), else null.
 */
function asciiText(column) {
  const bytes = column.bytes;
  if (bytes.length === 0) return '';
  let text;
  try {
    text = utf8Decoder.decode(bytes);
  } catch {
    return null;
  }
  // Each non-ASCII character takes more bytes than UTF-16 units.
  return text.length === bytes.length ? text : null;
}

/**
 * One `handleBatch` call: the batch's columns (as text where ASCII), the
 * values written by its earlier events and the result's columns being
 * built.
 */
class Batch {
  constructor(input) {
    this.input = input;
    const n = input.keys.ends.length;
    this.keysText = asciiText(input.keys);
    this.namesText = asciiText(input.valueNames);
    this.valuesText = asciiText(input.valueBytes);
    this.keyNames = new Array(n).fill(null); // decoded keys
    // Per key, the index of its first value.
    const first = (this.firstValues = new Uint32Array(n + 1));
    const counts = input.valueCounts;
    for (let k = 0; k < n; k++) first[k + 1] = first[k] + counts[k];
    // Values written by the batch's handled events: name -> Map(key index
    // -> JSON text, or null when deleted).
    this.written = new Map();
    this.emitKeys = new Column();
    this.emitPayloads = new Column();
    this.writeNames = new Column();
    this.writeValues = new Column();
    this.deletes = new U32s(0);
    this.failed = new U32s(0);
    this.reasons = new Column();
    // The current event's writes, in first-write order (a value is null for
    // a delete). Operators write a handful of names: arrays, searched.
    this.pendingNames = [];
    this.pendingValues = [];
    this.k = 0; // the current event's key index
    this.stopped = false;
  }

  keyName(k) {
    const text = this.keysText;
    const ends = this.input.keys.ends;
    const key = text !== null
      ? text.slice(k === 0 ? 0 : ends[k - 1], ends[k])
      : utf8Decoder.decode(stringAt(this.input.keys, k));
    this.keyNames[k] = key;
    return key;
  }

  /** Value `name` of the current key as the batch brought it (text, or bytes when not ASCII), or null. */
  stored(name) {
    const { valueNames, valueBytes } = this.input;
    const nameEnds = valueNames.ends;
    const names = this.namesText;
    for (let j = this.firstValues[this.k], end = this.firstValues[this.k + 1]; j < end; j++) {
      const a = j === 0 ? 0 : nameEnds[j - 1];
      const b = nameEnds[j];
      const found = names !== null
        ? b - a === name.length && names.startsWith(name, a)
        : utf8Decoder.decode(valueNames.bytes.subarray(a, b)) === name;
      if (found) {
        const c = j === 0 ? 0 : valueBytes.ends[j - 1];
        const d = valueBytes.ends[j];
        return this.valuesText !== null ? this.valuesText.slice(c, d) : valueBytes.bytes.subarray(c, d);
      }
    }
    return null;
  }

  // ---- state ----

  get(name) {
    const pending = this.pendingNames;
    if (pending.length !== 0) {
      const i = pending.indexOf(name);
      if (i >= 0) return this.pendingValues[i];
    }
    const w = this.written.get(name);
    if (w !== undefined) {
      const v = w.get(this.k);
      if (v !== undefined) return v;
    }
    return this.stored(name);
  }

  set(name, text) {
    const i = this.pendingNames.indexOf(name);
    if (i >= 0) {
      this.pendingValues[i] = text;
    } else {
      this.pendingNames.push(name);
      this.pendingValues.push(text);
    }
  }

  delete(name) {
    const existed = this.get(name) !== null;
    this.set(name, null);
    return existed;
  }

  stop() {
    this.stopped = true;
    throw STOP_SIGNAL;
  }

  // ---- output ----

  /** `payload`: JSON text, or bytes from `emitRaw`. */
  emit(key, payload) {
    this.emitKeys.push(key);
    this.emitPayloads.push(payload);
  }

  /** Runs `handle` on every event; returns the batch result. */
  run(handle) {
    const { pendingNames, pendingValues, emitKeys, emitPayloads, writeNames, writeValues } = this;
    const { keyNames, written } = this;
    // Event times: `times[t]` is the time of event `timed[t]`; the others
    // have none.
    const { eventKeys, timed, times } = this.input;
    const n = eventKeys.length;
    const emitCounts = new Uint32Array(n);
    const writeCounts = new Uint32Array(n);
    let t = 0;
    let nextTimed = timed.length !== 0 ? timed[0] : -1;
    const payloads = this.input.payloads.bytes;
    const payloadEnds = this.input.payloads.ends;
    const payloadText = asciiText(this.input.payloads);
    const emitParts = emitKeys.parts;
    let stop = false;
    let i = 0;
    for (let start = 0; i < n; i++) {
      const k = eventKeys[i];
      this.k = k;
      let key = keyNames[k];
      if (key === null) key = this.keyName(k);
      const emitMark = emitParts.length;
      const end = payloadEnds[i];
      let time = null;
      if (i === nextTimed) {
        time = BigInt.asIntN(64, BigInt(times[t++]));
        nextTimed = t < timed.length ? timed[t] : -1;
      }
      const text = payloadText !== null ? payloadText.slice(start, end) : null;
      const event = new Event(key, null, time, text, payloads, start, end);
      start = end;
      let why = null;
      try {
        handle(event);
      } catch (e) {
        if (e !== STOP_SIGNAL) why = reason(e);
      }
      if (this.stopped || why !== null) {
        // Nothing of the event takes effect.
        pendingNames.length = pendingValues.length = 0;
        emitKeys.truncate(emitMark);
        emitPayloads.truncate(emitMark);
        if (this.stopped) {
          stop = true;
          break;
        }
        this.failed.push(i);
        this.reasons.push(why);
        continue; // its counts stay 0
      }
      emitCounts[i] = emitParts.length - emitMark;
      const nwrites = pendingNames.length;
      if (nwrites !== 0) {
        writeCounts[i] = nwrites;
        for (let w = 0; w < nwrites; w++) {
          const name = pendingNames[w];
          const value = pendingValues[w];
          writeNames.push(name);
          if (value === null) {
            this.deletes.push(writeValues.parts.length);
            writeValues.push('');
          } else {
            writeValues.push(value);
          }
          let m = written.get(name);
          if (m === undefined) written.set(name, (m = new Map()));
          m.set(k, value);
        }
        pendingNames.length = pendingValues.length = 0;
      }
    }
    return {
      emitCounts: emitCounts.subarray(0, i),
      writeCounts: writeCounts.subarray(0, i),
      emitKeys: emitKeys.column(),
      emitPayloads: emitPayloads.column(),
      writeNames: writeNames.column(),
      writeValues: writeValues.column(),
      deletes: this.deletes.column(),
      failed: this.failed.column(),
      reasons: this.reasons.column(),
      stop,
    };
  }
}

/** What `operator()` defined, for `handleBatch`: `ready()` once `init`
 * succeeded, and `handle(event)`. */
let batchOperator = null;

/**
 * The component's `handle-batch` export. `eddy build` exports it next to the
 * operator module's `init` and `handle`; it runs the handler given to
 * `operator()`. A module that does not use `operator()` gets a `stop` for
 * the first event, so the host handles it per event.
 */
export function handleBatch(input) {
  if (batchOperator === null) {
    // Nothing handled: the host handles the batch (and the next) per event.
    const none = { bytes: new Uint8Array(0), ends: new Uint32Array(0) };
    const no = new Uint32Array(0);
    return {
      emitCounts: no, writeCounts: no, emitKeys: none, emitPayloads: none, writeNames: none,
      writeValues: none, deletes: no, failed: no, reasons: none, stop: input.eventKeys.length !== 0,
    };
  }
  // A trap: the host replays the batch with `handle`, which reports it.
  if (!batchOperator.ready()) throw new Error('handle-batch called before init');
  const b = new Batch(input);
  batch = b;
  try {
    return b.run(batchOperator.handle);
  } finally {
    batch = null;
  }
}

// ---------------------------------------------------------------------------
// The operator

/**
 * Defines the operator. `init(config)` runs once per instance with a Config
 * and may return anything (settings); `handle(event, settings)` runs per
 * event; `onTimer(timer, settings)` (optional) runs when a timer the
 * operator set fires, with a `Timer` (`key`, `name`, `at`). Throw (a string
 * or an Error) to refuse the config or to send the event (or the firing) to
 * the dead-letter output; its state writes, timer changes and emits are
 * dropped.
 *
 *   export const { init, handle } = operator({ init(config) {...}, handle(event, s) {...} });
 */
export function operator(def) {
  let settings;
  let ready = false;
  const exports = {
    init(configText) {
      try {
        const config = new Config(configText);
        settings = def.init ? def.init(config) : config;
        ready = true;
      } catch (e) {
        throw reason(e);
      }
    },
    handle(raw) {
      if (!ready) throw 'handle called before init';
      try {
        def.handle(new Event(raw), settings);
      } catch (e) {
        throw reason(e);
      }
    },
  };
  batchOperator = {
    ready: () => ready,
    handle: (event) => def.handle(event, settings),
  };
  timerOperator = {
    ready: () => ready,
    onTimer: def.onTimer ? (timer) => def.onTimer(timer, settings) : null,
  };
  return exports;
}
