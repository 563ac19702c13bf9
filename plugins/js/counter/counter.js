// Keyed counter: for every event, the key's running count and the sum of a
// numeric field (`amount` unless the config says `field = "..."`).
//
// Emits {"count": <events so far>, "sum": <sum so far>} keyed like the input.
// Events whose field is missing or not a number count with 0. The JavaScript
// twin of plugins/counter (same state, same output bytes).

import { operator, Value, emit, struct } from '../eddy.js';

/** The key's totals, one state value: {"count": u64, "sum": f64}. */
const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
const TOTALS = Value('totals', Totals);

export const { init, handle } = operator({
  init(config) {
    return { field: config.get('field', 'string') ?? 'amount' };
  },

  handle(event, { field }) {
    const amount = numberField(event, field);
    const t = TOTALS.get() ?? { count: 0, sum: 0 };
    t.count += 1;
    t.sum += amount;
    TOTALS.set(t);
    emit(event.key, t, Totals);
  },
});

/** One numeric top-level field of the payload object; 0 when missing or not a number. */
function numberField(event, field) {
  let payload;
  try {
    payload = event.parse('object');
  } catch (e) {
    throw `payload is not a JSON object: ${e.message}`;
  }
  const v = Object.hasOwn(payload, field) ? payload[field] : undefined;
  return typeof v === 'number' || typeof v === 'bigint' ? Number(v) : 0;
}
