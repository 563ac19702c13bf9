// Card fraud alerts over a sliding window of event time: the JavaScript twin
// of plugins/fraud (same config, state, output and errors; see its README).
//
// Per card (the key), keeps the card's transactions of the last `window_ms`
// milliseconds and emits an alert when the window's total spend exceeds
// `max_spend` (reason "spend") or its number of transactions exceeds
// `max_count` (reason "velocity"). Transactions inside the limits emit nothing.

import { operator, Value, List, emit, struct } from '../eddy.js';

const Settings = struct(
  'Settings',
  { window_ms: 'i64', max_spend: 'f64', max_count: 'u32' },
  { default: { window_ms: 60000, max_spend: 1000, max_count: 5 }, denyUnknownFields: true },
);

/** One input line. Other fields (such as `merchant`) are ignored. */
const Transaction = struct('Transaction', { card: 'string', amount: 'f64', ts: 'i64?' });

const Entry = struct('Entry', { ts: 'i64', amount: 'f64' });

const Alert = struct('Alert', {
  card: 'string',
  reason: 'string',
  window_spend: 'f64',
  window_count: 'u32',
  total_spend: 'f64',
  ts: 'i64',
});

/** The card's recent transactions, oldest first. */
const WINDOW = List('window', Entry);
/** The card's lifetime spend. */
const TOTAL_SPEND = Value('total_spend', 'f64');

const I64_MIN = -(2n ** 63n);

export const { init, handle } = operator({
  init(config) {
    const s = config.parse(Settings);
    if (s.window_ms <= 0) throw 'window_ms must be positive';
    if (s.max_spend < 0) throw 'max_spend must be zero or more';
    return { windowMs: BigInt(s.window_ms), maxSpend: s.max_spend, maxCount: s.max_count };
  },

  handle(event, settings) {
    const txn = event.json(Transaction);
    const time = event.time ?? txn.ts;
    if (time === null) {
      throw `transaction of card ${txn.card} has no time: no pipeline time and no \`ts\` field`;
    }
    const ts = BigInt(time); // event times are i64: exact arithmetic

    const totalSpend = (TOTAL_SPEND.get() ?? 0) + txn.amount;
    TOTAL_SPEND.set(totalSpend);

    WINDOW.push({ ts, amount: txn.amount });
    const entries = WINDOW.all();
    let start = ts - settings.windowMs;
    if (start < I64_MIN) start = I64_MIN; // saturating, like Rust
    // The list is append-only, so drop the oldest entries that fell out of
    // the window. A late (out-of-order) transaction can leave an old entry
    // behind newer ones; the filter below skips it and a later trim drops it.
    let stale = 0;
    while (stale < entries.length && BigInt(entries[stale].ts) < start) stale++;
    WINDOW.trim(entries.length - stale);

    let windowCount = 0;
    let windowSpend = 0;
    for (let i = stale; i < entries.length; i++) {
      const t = BigInt(entries[i].ts);
      if (t >= start && t <= ts) {
        windowCount += 1;
        windowSpend += entries[i].amount;
      }
    }

    let reason;
    if (windowSpend > settings.maxSpend) reason = 'spend';
    else if (windowCount > settings.maxCount) reason = 'velocity';
    else return;

    emit(
      event.key,
      {
        card: txn.card,
        reason,
        window_spend: cents(windowSpend),
        window_count: windowCount,
        total_spend: cents(totalSpend),
        ts,
      },
      Alert,
    );
  },
});

/** Rounds an amount to cents, half away from zero like Rust's f64::round. */
function cents(amount) {
  const x = amount * 100;
  const r = x < 0 ? -Math.round(-x) : Math.round(x);
  return r / 100;
}
