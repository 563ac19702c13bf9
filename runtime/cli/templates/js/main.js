// {{name}}: for every event, the key's running count of events and the sum
// of their `amount` (0 when absent), emitted as {"count": .., "sum": ..}
// keyed like the input. An `amount` that is not a number dead-letters the
// event.

import { operator, Value, emit, struct } from '../eddy.js';

/** The key's totals, one state value per key: {"count": u64, "sum": f64}. */
const Totals = struct('Totals', { count: 'u64', sum: 'f64' });
const TOTALS = Value('totals', Totals);

export const { init, handle } = operator({
  // Once per event; the state calls act on event.key's state.
  handle(event) {
    const payload = event.json('object');
    const amount = Object.hasOwn(payload, 'amount') ? payload.amount : 0;
    if (typeof amount !== 'number') throw `amount is not a number: ${JSON.stringify(amount)}`;
    const t = TOTALS.get() ?? { count: 0, sum: 0 };
    t.count += 1;
    t.sum += amount;
    TOTALS.set(t);
    emit(event.key, t, Totals);
  },
});
