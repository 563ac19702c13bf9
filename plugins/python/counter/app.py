"""Keyed counter, the Python twin of plugins/counter (Rust).

For every event: the key's running count and the sum of a numeric field
(`amount` unless the config says `field = "..."`). Emits
`{"count": <events so far>, "sum": <sum so far>}` keyed like the input.
Events whose field is missing or not a number count with 0. State (`totals`)
and output are byte-identical to the Rust operator's.
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
    def init(self, config):
        self.field = config.get("field", str, default="amount")

    def handle(self, event):
        try:
            payload = eddy.loads(event.value)
        except ValueError as e:
            raise eddy.Error(f"payload is not a JSON object: {e}")
        if not isinstance(payload, dict):
            raise eddy.Error(f"payload is not a JSON object: it is {_kind(payload)}")
        amount = eddy.number(payload.get(self.field))  # bools are not numbers

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
