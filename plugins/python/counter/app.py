"""Keyed counter, the Python twin of plugins/counter (Rust).

For every event: the key's running count and the sum of its `amount` field.
Emits `{"count": <events so far>, "sum": <sum so far>}` keyed like the input.
An event without `amount` counts with 0; one whose `amount` is not a number
is refused (dead-lettered) and leaves the totals unchanged. State (`totals`),
output and refusals are the Rust operator's.
"""

from dataclasses import dataclass

import eddy


@dataclass
class Totals:
    """The key's totals, one state value: one read and one write per event."""

    count: eddy.u64
    sum: float


TOTALS = eddy.Value("totals", Totals)


class Counter:
    def handle(self, event):
        try:
            payload = eddy.loads(event.value)
        except ValueError as e:
            raise eddy.Error(f"payload is not a JSON object: {e}")
        if not isinstance(payload, dict):
            raise eddy.Error(f"payload is not a JSON object: it is {_kind(payload)}")
        amount = payload.get("amount", 0)
        # bools are ints in Python, not numbers in JSON
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise eddy.Error(f"invalid type: {_kind(amount)}, expected f64")

        t = TOTALS.get(Totals(count=0, sum=0.0))
        t.count += 1
        t.sum += amount
        TOTALS.set(t)
        eddy.emit(event.key, t)


def _kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return "a string" if isinstance(v, str) else "an array"


WitWorld = eddy.export(Counter)
