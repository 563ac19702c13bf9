"""Window count and sum, the Python twin of plugins/window-sum (Rust).

A window aggregate (world `window-operator`, which `eddy build` picks for
a source that calls `eddy.export_window`): per key and window, the number of events and
the sum of a numeric field (config `field`, default `amount`; a missing
field counts as 0, one that is not a number fails the event), emitted as
`{"start": .., "end": .., "count": .., "sum": ..}`. The pipeline file
declares the windows (`window = { kind = "tumbling", size = 60000 }` on the
operator); the output is the Rust aggregate's, byte for byte.
"""

from dataclasses import dataclass

import eddy


@dataclass
class Totals:
    """A window's accumulator (stored by the host as its JSON)."""

    count: eddy.u64
    sum: float


@dataclass
class Out:
    """What a window emits."""

    start: int
    end: int
    count: int
    sum: float


class WindowSum:
    def init(self, config):
        self.field = config.get("field", str, default="amount")

    def create(self):
        return Totals(count=0, sum=0.0)

    def add(self, acc, event):
        payload = event.json()
        if not isinstance(payload, dict):
            raise eddy.Error("cannot read the payload: it is not a JSON object")
        amount = payload.get(self.field, 0)
        # bools are ints in Python, not numbers in JSON
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise eddy.Error(
                f"cannot read the payload: field `{self.field}` is {eddy.dumps(amount)}, not a number"
            )
        acc.count += 1
        acc.sum += amount

    def merge(self, acc, other):
        acc.count += other.count
        acc.sum += other.sum

    def finish(self, window, acc):
        return Out(start=window.start, end=window.end, count=acc.count, sum=acc.sum)


WitWorld = eddy.export_window(WindowSum, Totals)
