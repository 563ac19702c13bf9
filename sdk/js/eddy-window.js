// Eddy window aggregates in JavaScript: the JavaScript counterpart of the
// Rust SDK's `eddy_sdk::window` (world `window-operator`, wit/window.wit).
//
// The pipeline file declares an operator a window (`window = { kind =
// "tumbling", size = 60000 }`); the host assigns events to windows, keeps
// one accumulator per key and pane (or session), fires each window once the
// watermark reaches its end and emits what `finish` returns. You write the
// aggregate over an accumulator of your own:
//
//   import { aggregate, struct } from '../eddy-window.js';
//
//   const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
//   const Out = struct('Out', { start: 'i64', end: 'i64', count: 'u64', sum: 'f64' });
//
//   export const { init, add, merge, finish } = aggregate({
//     accumulator: Totals,            // how accumulators are stored (JSON)
//     output: Out,                    // how `finish`'s result is written
//     init(config) { return { field: config.get('field', 'string') ?? 'amount' }; },
//     create(settings) { return { count: 0, sum: 0 }; },
//     add(acc, event, settings) { acc.count += 1; acc.sum += event.json().amount; },
//     merge(acc, other, settings) { acc.count += other.count; acc.sum += other.sum; },
//     finish(window, acc, settings) { return { start: window.start, end: window.end, ...acc }; },
//   });
//
// and build it with `eddy build` (which picks world `window-operator` for
// a module that imports eddy-window.js). A window
// aggregate has no state, timers or emits (the host keeps the windows):
// this module imports only the host's `log`, and shares shapes, JSON,
// errors, events and config with eddy.js through eddy-json.js.

import { Config, Event, parseJson, encodeText, reason, utf8Encoder } from './eddy-json.js';

export {
  Config, Event, F64, JsonError, OperatorError, f64, formatFloat, log, parseJson, struct, toJson,
} from './eddy-json.js';

/** A window being finished: `key` (what it emits goes out under it),
 * `start` (its first event time, inclusive; a session's first event's
 * time) and `end` (exclusive; a session's last event's time plus the gap),
 * as BigInts. */
export class Window {
  constructor(key, start, end) {
    this.key = key;
    this.start = start;
    this.end = end;
  }
}

// componentize-js 0.23 hands s64 values over as unsigned (-5 arrives as
// 2^64 - 5): reinterpret them as signed.
function s64(x) {
  return BigInt.asIntN(64, BigInt(x));
}

function stringAt(column, i) {
  return column.bytes.subarray(i ? column.ends[i - 1] : 0, column.ends[i]);
}

/** Builds a `strings` column from byte arrays. */
function column(items) {
  let n = 0;
  for (const b of items) n += b.length;
  const bytes = new Uint8Array(n);
  const ends = new Uint32Array(items.length);
  let at = 0;
  for (let i = 0; i < items.length; i++) {
    bytes.set(items[i], at);
    at += items[i].length;
    ends[i] = at;
  }
  return { bytes, ends };
}

/**
 * Makes a window aggregate's exports: bind them as
 * `export const { init, add, merge, finish } = aggregate({...})`.
 *
 * `def` has:
 * - `accumulator`: the accumulator's shape (see `struct`; default 'any'):
 *   accumulators are stored by the host as this JSON, and decoded with it;
 * - `output`: the shape `finish`'s result is written as (default 'any');
 * - `init(config)` (optional): once; what it returns is `settings`, handed
 *   to the others (default: the `Config`);
 * - `create(settings)`: the empty accumulator a window's first event is
 *   added to;
 * - `add(acc, event, settings)`: folds `event` (an `Event` whose `key` is
 *   null: `event.value`, `event.time`, `event.json(shape)`) into `acc`, in
 *   place or by returning the new accumulator (`undefined` keeps `acc`).
 *   Throwing dead-letters the event, and its window's accumulator is then
 *   as it was before the event;
 * - `merge(acc, other, settings)`: merges `other` into `acc` (a hopping
 *   window's panes, oldest first, or the sessions an event bridges), in
 *   place or by returning the result;
 * - `finish(window, acc, settings)`: what window `window` (a `Window`)
 *   emits, written as `output` (a Uint8Array is emitted as it is), or
 *   `null`/`undefined` to emit nothing. Throwing dead-letters the firing.
 *
 * One aggregate serves every key and window: keep per-window data in the
 * accumulator. Each `add` call decodes and encodes every accumulator it is
 * handed once, however many events it folds into it.
 */
export function aggregate(def) {
  const accShape = def.accumulator ?? 'any';
  const outShape = def.output ?? 'any';
  let settings;
  let ready = false;

  const decodeAcc = (bytes) => {
    try {
      return parseJson(bytes, accShape);
    } catch (e) {
      throw `a window accumulator does not decode: ${reason(e)}`;
    }
  };
  const encodeAcc = (acc) => utf8Encoder.encode(encodeText('a window accumulator', acc, accShape));
  const fold = (acc, event) => {
    const r = def.add(acc, event, settings);
    return r === undefined ? acc : r;
  };
  const merged = (accumulators) => {
    const n = accumulators.ends.length;
    if (n === 0) return def.create(settings);
    let acc = decodeAcc(stringAt(accumulators, 0));
    for (let i = 1; i < n; i++) {
      const r = def.merge(acc, decodeAcc(stringAt(accumulators, i)), settings);
      if (r !== undefined) acc = r;
    }
    return acc;
  };

  return {
    init(configText) {
      try {
        const config = new Config(configText);
        settings = def.init ? def.init(config) : config;
        ready = true;
      } catch (e) {
        throw reason(e);
      }
    },

    // Folds the events of `adds` into their accumulators (wit/window.wit):
    // each accumulator is decoded once and encoded once per call. An event
    // whose `add` throws is left out: its accumulator is rebuilt from the
    // call's input and its earlier events that did not fail, so nothing is
    // copied per event.
    add(adds) {
      // A trap: the host replays the call event by event.
      if (!ready) throw new Error('add called before init');
      const accColumn = adds.accumulators;
      const n = accColumn.ends.length;
      const fresh = new Set(adds.fresh);
      const original = (i) => (fresh.has(i) ? def.create(settings) : decodeAcc(stringAt(accColumn, i)));
      const accs = new Array(n);
      const broken = new Map(); // accumulator index -> why it does not decode
      for (let i = 0; i < n; i++) {
        try {
          accs[i] = original(i);
        } catch (e) {
          broken.set(i, reason(e));
        }
      }
      const { targets, times, payloads } = adds;
      const event = (k) =>
        new Event(null, null, s64(times[k]), null, payloads.bytes,
          k ? payloads.ends[k - 1] : 0, payloads.ends[k]);
      const failed = [];
      const failedSet = new Set();
      const reasons = [];
      for (let k = 0; k < targets.length; k++) {
        const t = targets[k];
        let why;
        if (t >= n) {
          why = `event ${k}: no accumulator ${t}`;
        } else if (broken.has(t)) {
          why = broken.get(t);
        } else {
          try {
            accs[t] = fold(accs[t], event(k));
            continue;
          } catch (e) {
            why = reason(e);
          }
          // Put the accumulator back as it was before this event.
          let acc = original(t);
          for (let j = 0; j < k; j++) {
            if (targets[j] === t && !failedSet.has(j)) acc = fold(acc, event(j));
          }
          accs[t] = acc;
        }
        failed.push(k);
        failedSet.add(k);
        reasons.push(utf8Encoder.encode(why));
      }
      const out = new Array(n);
      for (let i = 0; i < n; i++) {
        // A damaged accumulator is handed back as it came. An accumulator
        // that does not encode throws: a trap, and the host replays the
        // call event by event, dead-lettering each with the reason.
        out[i] = broken.has(i) ? stringAt(accColumn, i).slice() : encodeAcc(accs[i]);
      }
      return { accumulators: column(out), failed: new Uint32Array(failed), reasons: column(reasons) };
    },

    merge(accumulators) {
      if (!ready) throw 'merge called before init';
      try {
        return encodeAcc(merged(accumulators));
      } catch (e) {
        throw reason(e);
      }
    },

    finish(bounds, accumulators) {
      if (!ready) throw 'finish called before init';
      try {
        const w = new Window(bounds.key, s64(bounds.start), s64(bounds.end));
        const result = def.finish(w, merged(accumulators), settings);
        if (result === null || result === undefined) return undefined;
        if (result instanceof Uint8Array) return result;
        return utf8Encoder.encode(encodeText("the window's output", result, outShape));
      } catch (e) {
        throw reason(e);
      }
    },
  };
}
