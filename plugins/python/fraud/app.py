"""Card fraud alerts over a sliding window of event time: the Python twin of
plugins/fraud (Rust); see plugins/fraud/README.md for the shapes.

Per card (the key), keeps the card's transactions of the last `window_ms`
milliseconds (list `window` of `{"ts", "amount"}`) and its lifetime spend
(value `total_spend`), and emits an alert when the window's total spend
exceeds `max_spend` (reason "spend") or its number of transactions exceeds
`max_count` (reason "velocity"). State calls, state bytes and alerts are the
same as the Rust operator's.
"""

import math
from dataclasses import dataclass
from typing import Optional

import eddy

_I64_MIN = -(1 << 63)


@dataclass
class Settings:
    window_ms: eddy.i64 = 60_000
    max_spend: float = 1000.0
    max_count: eddy.u32 = 5


@dataclass
class Transaction:
    """One input line. Other fields (such as `merchant`) are ignored."""

    card: str
    amount: float
    ts: Optional[eddy.i64] = None


@dataclass
class Entry:
    ts: eddy.i64
    amount: float


@dataclass
class Alert:
    card: str
    reason: str
    window_spend: float
    window_count: eddy.u32
    total_spend: float
    ts: eddy.i64


WINDOW = eddy.List("window", Entry)  # the card's recent transactions, oldest first
TOTAL_SPEND = eddy.Value("total_spend", float)  # the card's lifetime spend


class Fraud:
    def init(self, config):
        s = config.parse(Settings, deny_unknown=True)
        if s.window_ms <= 0:
            raise eddy.Error("window_ms must be positive")
        if s.max_spend < 0.0:
            raise eddy.Error("max_spend must be zero or more")
        self.settings = s

    def handle(self, event):
        txn = event.json(Transaction)
        ts = event.time if event.time is not None else txn.ts
        if ts is None:
            raise eddy.Error(
                f"transaction of card {txn.card} has no time: "
                "no pipeline time and no `ts` field")

        total_spend = TOTAL_SPEND.get(0.0) + txn.amount
        TOTAL_SPEND.set(total_spend)

        WINDOW.push(Entry(ts=ts, amount=txn.amount))
        entries = WINDOW.all()
        start = max(ts - self.settings.window_ms, _I64_MIN)  # saturating
        # The list is append-only, so drop the oldest entries that fell out of
        # the window. A late transaction can leave an old entry behind newer
        # ones; the filter below skips it and a later trim drops it.
        stale = 0
        while stale < len(entries) and entries[stale].ts < start:
            stale += 1
        WINDOW.trim(len(entries) - stale)

        window_count, window_spend = 0, 0.0
        for e in entries[stale:]:
            if start <= e.ts <= ts:
                window_count += 1
                window_spend += e.amount

        if window_spend > self.settings.max_spend:
            reason = "spend"
        elif window_count > self.settings.max_count:
            reason = "velocity"
        else:
            return
        eddy.emit(event.key, Alert(
            card=txn.card,
            reason=reason,
            window_spend=cents(window_spend),
            window_count=window_count,
            total_spend=cents(total_spend),
            ts=ts,
        ))


def cents(amount):
    """Rounds to cents like Rust's `(amount * 100.0).round() / 100.0`: halves
    round away from zero (Python's round() would round them to even)."""
    x = amount * 100.0
    if math.isfinite(x):
        whole = math.floor(abs(x))
        if abs(x) - whole >= 0.5:
            whole += 1
        x = math.copysign(float(whole), x)
    return x / 100.0


WitWorld = eddy.export(Fraud)
