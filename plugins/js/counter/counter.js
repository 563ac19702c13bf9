// Keyed counter: for every event, the key's running count and the sum of its
// `amount` field.
//
// Emits {"count": <events so far>, "sum": <sum so far>} keyed like the input.
// An event without `amount` counts with 0; one whose `amount` is not a number
// is refused (dead-lettered) and leaves the totals unchanged. The JavaScript
// twin of plugins/counter (same state, output bytes and refusals).

import { operator, Value, emit, struct } from '../eddy.js';

/** The key's totals, one state value: {"count": u64, "sum": f64}. */
const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
const TOTALS = Value('totals', Totals);

export const { init, handle } = operator({
  handle(event) {
    const amount = amountOf(event);
    const t = TOTALS.get() ?? { count: 0, sum: 0 };
    t.count += 1;
    t.sum += amount;
    TOTALS.set(t);
    emit(event.key, t, Totals);
  },
});

/** The payload's `amount`: 0 when missing; an error when not a number. */
function amountOf(event) {
  let payload;
  try {
    payload = event.parse('object');
  } catch (e) {
    throw `payload is not a JSON object: ${e.message}`;
  }
  if (!Object.hasOwn(payload, 'amount')) return 0;
  const v = payload.amount;
  if (typeof v === 'number' || typeof v === 'bigint') return Number(v);
  throw `invalid type: ${v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v}, expected a number`;
}
