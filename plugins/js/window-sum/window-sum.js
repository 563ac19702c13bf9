// Window count and sum, the JavaScript twin of plugins/window-sum (Rust).
//
// A window aggregate (world `window-operator`, which `eddy build` picks for
// a module that imports eddy-window.js): per key and window, the number of events and
// the sum of a numeric field (config `field`, default `amount`; a missing
// field counts as 0, one that is not a number fails the event), emitted as
// {"start": .., "end": .., "count": .., "sum": ..}. The pipeline file
// declares the windows; the output is the Rust aggregate's, byte for byte.

import { aggregate, struct, toJson, OperatorError } from '../eddy-window.js';

// A window's accumulator, stored by the host as its JSON.
const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
// What a window emits.
const Out = struct('Out', { start: 'i64', end: 'i64', count: 'u64', sum: 'f64' });

export const { init, add, merge, finish } = aggregate({
  accumulator: Totals,
  output: Out,

  init(config) {
    return { field: config.get('field', 'string') ?? 'amount' };
  },

  create() {
    return { count: 0, sum: 0 };
  },

  add(acc, event, { field }) {
    const payload = event.json();
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      throw new OperatorError('cannot read the payload: it is not a JSON object');
    }
    const amount = Object.prototype.hasOwnProperty.call(payload, field) ? payload[field] : 0;
    if (typeof amount !== 'number' && typeof amount !== 'bigint') {
      throw new OperatorError(`cannot read the payload: field \`${field}\` is ${toJson(amount)}, not a number`);
    }
    acc.count += 1;
    acc.sum += Number(amount);
  },

  merge(acc, other) {
    acc.count += other.count;
    acc.sum += other.sum;
  },

  finish(window, acc) {
    return { start: window.start, end: window.end, count: acc.count, sum: acc.sum };
  },
});
