"""{{name}}: for every event, the key's running count of events and the sum
of their `amount` (0 when absent), emitted as {"count": .., "sum": ..} keyed
like the input. An `amount` that is not a number dead-letters the event."""

from dataclasses import dataclass

import eddy


@dataclass
class Totals:
    """The key's totals: one state value per key."""

    count: eddy.u64
    sum: float


TOTALS = eddy.Value("totals", Totals)


class Operator:
    def init(self, config):
        """Once per instance, with the pipeline's `config` for this operator."""

    def handle(self, event):
        """Once per event; the state calls act on event.key's state."""
        payload = event.json()
        if not isinstance(payload, dict):
            raise eddy.Error("the event is not a JSON object")
        amount = payload.get("amount", 0)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise eddy.Error(f"amount is not a number: {amount!r}")
        t = TOTALS.get(Totals(count=0, sum=0.0))
        t.count += 1
        t.sum += amount
        TOTALS.set(t)
        eddy.emit(event.key, t)


WitWorld = eddy.export(Operator)
