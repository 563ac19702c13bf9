"""Write Eddy stream operators in Python.

The Python counterpart of the Rust SDK (`sdk/rust/src/lib.rs`). An operator is a
class with `init(self, config)` and `handle(self, event)`; `export` turns it
into the component's exports:

    import eddy
    from dataclasses import dataclass

    @dataclass
    class Totals:
        count: int = 0
        sum: float = 0.0

    TOTALS = eddy.Value("totals", Totals)

    class Counter:
        def init(self, config):
            self.field = config.get("field", str, default="amount")

        def handle(self, event):
            amount = eddy.number(event.json().get(self.field))
            t = TOTALS.get() or Totals()
            t.count += 1
            t.sum += amount
            TOTALS.set(t)
            eddy.emit(event.key, t)

    WitWorld = eddy.export(Counter)

State and emitted values are JSON, encoded by `dumps` exactly as Rust's
serde_json (1.0.154, the version the Rust operators are built with) does it:
compact, and floats in its shortest form, such as `40.0`, `12.5`, `1e+16`,
`1.5e-7`, with `null` for NaN and infinities. So state written by a Python operator is
byte-identical to the state of the same operator written in Rust. A
dataclass encodes as an object with its fields in declaration order (the
order of a Rust struct's fields); a field annotated `float` always encodes as
a float (`40.0`, not `40`), like an `f64` field.

Raise `eddy.Error("reason")` (or any exception) from `handle` to reject the
event: none of its state writes or emits take effect and the event goes to
the dead-letter output with the reason. From `init`, it refuses the config.

Built for world `batched-timer-operator` (`eddy build --world
batched-timer-operator`; `eddy build` builds Python operators for
`timer-operator` by default, where the per-event path measures faster), the
component also exports the batched entry point `handle-batch`: `handle` then
runs on each event of a batch, `Value` reads are served from the batch and
writes and emits are kept per event, with the same results as one call per
event. An event that uses `Map`, `List`, `clear_key` or `timers` goes back
to the host, which runs it and the rest per event.

Event-time timers (`eddy.timers`): `timers.set("timeout", at)` sets timer
`timeout` of the current key, replacing a pending one of that name; once the
watermark is past `at` (or a file input ends), the host calls the operator's
`on_timer(self, timer)` with an `eddy.Timer` (`key`, `name`, `at`), where
state, timer and emit calls act on `timer.key`:

    class Tracking:
        def handle(self, event):
            eddy.timers.set("delay", event.time + 60_000)

        def on_timer(self, timer):
            eddy.emit(timer.key, {"delayed_since": timer.at - 60_000})

Window aggregates (world `window-operator`, which `eddy build` picks for a
source that calls `export_window`): a class with `create`, `add(acc, event)`, `merge(acc,
other)` and `finish(window, acc)` over an accumulator of your own, exported
with `WitWorld = eddy.export_window(MyAggregate, AccumulatorType)`; the
host keeps the windows (see `export_window`).
"""

import dataclasses
import json
import math
import types
import typing

try:  # present inside the component (componentize-py generates it)
    from componentize_py_types import Err as _Err
    from wit_world.imports import log as _wit_log
    from wit_world.imports import types as _wit_types
except ImportError:  # plain CPython, e.g. to test `dumps`
    _Err = _wit_log = _wit_types = None
try:  # the keyed worlds (`operator`, `timer-operator`, ...), not `window-operator`
    from wit_world.imports import output as _wit_output
    from wit_world.imports import state as _wit_state
    from wit_world.imports import timers as _wit_timers
except ImportError:
    _wit_output = _wit_state = _wit_timers = None
try:  # the batched worlds and `window-operator` only
    from wit_world.imports import batch as _wit_batch
except ImportError:
    _wit_batch = None
try:  # `window-operator` only
    from wit_world.imports import window as _wit_window
except ImportError:
    _wit_window = None

# Where state and emit calls go: the host's imports, or, during
# `handle_batch`, the running batch (`_Batch`), which serves and buffers them.
_state = _wit_state
_output = _wit_output

__all__ = [
    "Error", "Event", "Config", "Value", "Map", "List",
    "emit", "emit_raw", "clear_key", "config", "log", "timers", "Timer",
    "dumps", "loads", "decode", "number", "export", "i64", "u64", "u32",
    "WindowEvent", "Window", "export_window",
]

_U32_MAX = 0xFFFFFFFF


class i64(int):
    """Annotation for a dataclass field (or `decode` type) holding a JSON
    integer that fits a Rust `i64`; `decode` checks the range."""


class u64(int):
    """Like `i64`, for a Rust `u64`."""


class u32(int):
    """Like `i64`, for a Rust `u32`."""


_INT_RANGES = {
    i64: ("i64", -(1 << 63), (1 << 63) - 1),
    u64: ("u64", 0, (1 << 64) - 1),
    u32: ("u32", 0, _U32_MAX),
}


class Error(Exception):
    """An error with a message for the dead-letter output (from `handle`) or
    the user (from `init`)."""


# ---- JSON, byte-compatible with serde_json ---------------------------------


def _float(x):
    """Formats a float like serde_json 1.0.154 (its `zmij` formatter: the
    shortest round-trip digits, fixed notation for exponents -5..=15, else
    `d.ddde+N` / `d.ddde-N`); non-finite is null, as serde_json writes it."""
    r = float.__repr__(x)
    if "e" not in r and "n" not in r:
        # Fixed notation, which Python uses for exponents -4..=15: the same
        # text as serde_json's.
        return r
    if x != x or x in (math.inf, -math.inf):
        return "null"
    if x == 0.0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    # repr gives the shortest round-trip digits; only the layout differs.
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    mant, _, exp = r.partition("e")
    whole, _, frac = mant.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    n = len(digits)
    # value = 0.<digits> * 10^point, i.e. digits * 10^(point - n)
    if 0 <= point - n and point <= 16:
        s = digits + "0" * (point - n) + ".0"
    elif 0 < point <= 16:
        s = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        s = "0." + "0" * -point + digits
    else:
        e = point - 1
        s = digits[0] + ("." + digits[1:] if n > 1 else "") + ("e+" if e >= 0 else "e") + str(e)
    return sign + s


def _is_union(tp):
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


_encode_str = json.encoder.encode_basestring  # same escapes as serde_json
_hints = {}


def _float_fields(cls):
    """Names of a dataclass's fields annotated `float` (or Optional[float])."""
    names = _hints.get(cls)
    if names is None:
        names = set()
        for name, tp in typing.get_type_hints(cls).items():
            if tp is float or (_is_union(tp) and float in typing.get_args(tp)):
                names.add(name)
        _hints[cls] = names
    return names


def _encode(o, out):
    t = type(o)
    if t is float:
        out.append(_float(o))
        return
    if t is int:
        out.append(int.__repr__(o))
        return
    if t is str:
        out.append(_encode_str(o))
        return
    enc = _dataclass_encoders.get(t)
    if enc is not None:
        out.append(enc(o))
        return
    if o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif isinstance(o, int):
        out.append(int.__repr__(o))
    elif isinstance(o, float):
        out.append(_float(o))
    elif isinstance(o, str):
        out.append(_encode_str(o))
    elif isinstance(o, dict):
        out.append("{")
        first = True
        for k, v in o.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"object keys must be strings, not {type(k).__name__}")
            if not first:
                out.append(",")
            first = False
            out.append(_encode_str(k if isinstance(k, str) else int.__repr__(k)))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(o, (list, tuple)):
        out.append("[")
        for i, v in enumerate(o):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    elif dataclasses.is_dataclass(o) and not isinstance(o, type):
        out.append(_dataclass_encoder(t)(o))
    else:
        raise TypeError(f"cannot encode a {type(o).__name__} as JSON")


# dataclass -> its encoder, a function generated for its fields.
_dataclass_encoders = {}


def _field(v, is_float):
    """A dataclass field's JSON; a float field's integer is written as a
    float (`40.0`), like an `f64` field's."""
    t = type(v)
    if t is float:
        return _float(v)
    if t is int:
        return _float(float(v)) if is_float else int.__repr__(v)
    if is_float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    out = []
    _encode(v, out)
    return "".join(out)


def _dataclass_encoder(cls):
    """The function that writes a `cls` instance as a JSON object, fields in
    declaration order. It is generated for the class: one expression with
    the field names and their quoted keys written in, and the common field
    types (float, int, str) written inline, since each call and loop step
    costs in an interpreter inside Wasm; any other value goes to `_field`,
    with the same result."""
    enc = _dataclass_encoders.get(cls)
    if enc is not None:
        return enc
    floats = _float_fields(cls)
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if not fields:
        enc = lambda o: "{}"  # noqa: E731
    else:
        lines = ["def enc(o):"]
        pieces = []
        for i, f in enumerate(fields):
            prefix = ("," if i else "{") + _encode_str(f.name) + ":"
            get = f"o.{f.name}" if f.name.isidentifier() else f"getattr(o, {f.name!r})"
            lines.append(f"    v{i} = {get}")
            if f.name in floats:
                piece = f"(_float(v{i}) if type(v{i}) is float else _field(v{i}, True))"
            elif hints.get(f.name) is str:
                piece = f"(_encode_str(v{i}) if type(v{i}) is str else _field(v{i}, False))"
            else:
                piece = f"(int_repr(v{i}) if type(v{i}) is int else _field(v{i}, False))"
            pieces.append(f"{prefix!r} + {piece}")
        lines.append("    return " + " + ".join(pieces) + " + '}'")
        scope = {"_float": _float, "_field": _field, "_encode_str": _encode_str, "int_repr": int.__repr__}
        exec("\n".join(lines), scope)
        enc = scope["enc"]
    _dataclass_encoders[cls] = enc
    return enc


def dumps(obj):
    """Encodes `obj` as compact JSON text, exactly as serde_json would."""
    enc = _dataclass_encoders.get(type(obj))
    if enc is not None:
        return enc(obj)
    out = []
    _encode(obj, out)
    return "".join(out)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text):
    x = float(text)
    if math.isinf(x):
        raise ValueError(f"number out of range: {text}")
    return x


# The C scanner of the `json` module, twice: `_scan` reads floats through
# `_finite` (a Python call per float literal) to refuse overflowing ones as
# serde_json does; `_scan_plain` reads them in C, for texts where no float
# can overflow (no exponent and short: one needs an `e` or 309 digits).
_scan = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite).scan_once
_scan_plain = json.JSONDecoder(parse_constant=_no_constant).scan_once
_space = json.decoder.WHITESPACE.match


def loads(data):
    """Parses JSON text (str or UTF-8 bytes) strictly, as serde_json does:
    no NaN/Infinity, no trailing text."""
    if type(data) is not str:
        data = (data if type(data) is bytes else bytes(data)).decode("utf-8")
    # What `json.loads(data)` does, with the same errors, in fewer calls
    # (each costs in an interpreter inside Wasm): the whitespace regex runs
    # only where there is whitespace.
    scan = _scan_plain if len(data) < 300 and "e" not in data and "E" not in data else _scan
    start = 0
    if data and data[0] in " \t\n\r":
        start = _space(data, 0).end()
    try:
        value, end = scan(data, start)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", data, e.value) from None
    if end != len(data):
        end = _space(data, end).end()
        if end != len(data):
            raise json.JSONDecodeError("Extra data", data, end)
    return value


def number(v, default=0.0):
    """`v` as a float when it is a JSON number (not a bool), else `default`."""
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return default


def _type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{json.dumps(v)}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{_float(v)}`"
    if isinstance(v, str):
        return f"string {json.dumps(v, ensure_ascii=False)}"
    return {list: "a sequence", dict: "a map"}.get(type(v), type(v).__name__)


def _missing(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise Error(f"missing field `{f.name}`")


def decode(tp, v, deny_unknown=False):
    """Converts parsed JSON `v` to `tp`, checking it like serde would: `tp` is
    a dataclass (from an object; unknown keys ignored unless `deny_unknown`,
    missing fields take their default or are an error), `float` (any number),
    `int` (any integer), `i64`/`u64`/`u32` (an integer in range), `str`, `bool`, `list`/`List[X]`, `Optional[X]`, or `None`/`Any`
    (no check). Raises `Error` naming the problem."""
    if tp is None or tp is typing.Any:
        return v
    try:
        f = _decoders[tp, deny_unknown]
    except KeyError:
        f = _decoders[tp, deny_unknown] = _make_decoder(tp, deny_unknown)
    except TypeError:  # an unhashable annotation: not cached
        f = _make_decoder(tp, deny_unknown)
    return f(v)


# (type, deny_unknown) -> the function `decode` applies: each type's checks
# and its dataclass fields' types are worked out once, not per value.
_decoders = {}


def _identity(v):
    return v


def _decode_float(v):
    if type(v) is float:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Error(f"invalid type: {_type_name(v)}, expected f64")
    return float(v)


def _field_decoder(tp):
    """The function `decode(tp, v)` applies to `v`."""
    if tp is None or tp is typing.Any:
        return _identity
    try:
        f = _decoders.get((tp, False))
        if f is None:
            f = _decoders[tp, False] = _make_decoder(tp, False)
        return f
    except TypeError:  # an unhashable annotation: not cached
        return lambda v: decode(tp, v)


def _make_decoder(tp, deny_unknown):
    """The function that converts parsed JSON to `tp` (see `decode`)."""
    if tp is None or tp is typing.Any:
        return _identity
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = rest[0] if len(rest) == 1 else None

        def optional(v):
            return None if v is None else decode(inner, v, deny_unknown)

        return optional
    if dataclasses.is_dataclass(tp):
        fields = dataclasses.fields(tp)
        names = [f.name for f in fields]
        expected = ", ".join(f"`{n}`" for n in names)
        hints = typing.get_type_hints(tp)
        # (name, decoder, field): the fields' decoders are looked up on first
        # use, once this one is cached, so a dataclass may refer to itself.
        plan = []

        def dataclass(v):
            if not isinstance(v, dict):
                raise Error(f"invalid type: {_type_name(v)}, expected struct {tp.__name__}")
            if deny_unknown:
                for k in v:
                    if k not in names:
                        raise Error(f"unknown field `{k}`, expected one of {expected}")
            if not plan and fields:
                plan[:] = [(f.name, _field_decoder(hints[f.name]), f) for f in fields]
            kwargs = {}
            late = []
            for name, dec, f in plan:
                if name in v:
                    value = dec(v[name])
                elif not f.init:
                    # Not an argument of `__init__`: the class sets it (a
                    # default, or `__post_init__`).
                    continue
                else:
                    value = _missing(f)
                if f.init:
                    kwargs[name] = value
                else:
                    late.append((name, value))
            obj = tp(**kwargs)
            # A field outside `__init__` that the JSON has (as `dumps`
            # writes it) is set after construction, frozen classes too.
            for name, value in late:
                object.__setattr__(obj, name, value)
            return obj

        if not deny_unknown:
            fast = _fast_dataclass_decoder(tp, fields, hints, dataclass)
            if fast is not None:
                return fast
        return dataclass
    if tp is float:
        return _decode_float
    if tp is int or tp in _INT_RANGES:
        name, lo, hi = _INT_RANGES.get(tp, ("an integer", None, None))

        def integer(v):
            if isinstance(v, bool) or not isinstance(v, int):
                raise Error(f"invalid type: {_type_name(v)}, expected {name}")
            if lo is not None and not lo <= v <= hi:
                raise Error(f"invalid value: integer `{v}`, expected {name}")
            return int(v)

        return integer
    if tp in (str, bool):
        what = "a string" if tp is str else "a boolean"

        def exact(v):
            if type(v) is not tp:
                raise Error(f"invalid type: {_type_name(v)}, expected {what}")
            return v

        return exact
    if tp is list or origin is list:
        item = args[0] if args else None

        def sequence(v):
            if not isinstance(v, list):
                raise Error(f"invalid type: {_type_name(v)}, expected a sequence")
            return [decode(item, x) for x in v]

        return sequence
    if tp is dict or origin is dict:
        item = args[1] if len(args) == 2 else None

        def mapping(v):
            if not isinstance(v, dict):
                raise Error(f"invalid type: {_type_name(v)}, expected a map")
            return {k: decode(item, x) for k, x in v.items()}

        return mapping
    return _identity


# Checks of a parsed JSON value `{v}` that the generated dataclass decoders
# inline, by field annotation: the value is then the field's as it is.
_FAST_CHECKS = {
    float: "type({v}) is float",
    int: "type({v}) is int",
    str: "type({v}) is str",
    bool: "type({v}) is bool",
}
for _tp, (_, _lo, _hi) in _INT_RANGES.items():
    _FAST_CHECKS[_tp] = "type({v}) is int and " + str(_lo) + " <= {v} <= " + str(_hi)


def _fast_dataclass_decoder(tp, fields, hints, slow):
    """A decoder for dataclass `tp` generated for its fields: when the JSON
    object has every field, each of exactly its annotated type (float, int,
    i64, u64, u32, str, bool), it makes the instance in one call; anything
    else (a missing field, an integer for a float, another annotation) goes
    to `slow`, the general decoder, which gives the same result or error.
    None when the class does not suit (a field with another annotation,
    not in `__init__`, or not named as an identifier)."""
    checks = []
    for i, f in enumerate(fields):
        try:
            check = _FAST_CHECKS.get(hints.get(f.name))
        except TypeError:  # an unhashable annotation
            return None
        if check is None or not f.init or not f.name.isidentifier():
            return None
        checks.append(check.format(v=f"v{i}"))
    if not fields:
        return None
    positional = not any(getattr(f, "kw_only", False) for f in fields)
    args = ", ".join(
        f"v{i}" if positional else f"{f.name}=v{i}" for i, f in enumerate(fields)
    )
    lines = [
        "def dec(v):",
        "    if type(v) is dict:",
        "        try:",
        *(f"            v{i} = v[{f.name!r}]" for i, f in enumerate(fields)),
        "        except KeyError:",
        "            return slow(v)",
        "        if " + " and ".join(checks) + ":",
        f"            return tp({args})",
        "    return slow(v)",
    ]
    scope = {"tp": tp, "slow": slow}
    exec("\n".join(lines), scope)
    return scope["dec"]


# ---- events and config -------------------------------------------------------


class Event:
    """The event being handled: `key` (state calls act on it), `value` (the
    payload bytes: the input line, or what the previous operator emitted) and
    `time` (event time from the pipeline's time field, or None)."""

    __slots__ = ("key", "value", "time")

    def __init__(self, key, value, time=None):
        self.key = key
        self.value = value
        self.time = time

    def json(self, tp=None):
        """The payload parsed as JSON, converted to `tp` when given (see
        `decode`); `Error` when it is not valid JSON or not a `tp`."""
        try:
            return decode(tp, loads(self.value))
        except (ValueError, Error) as e:
            raise Error(f"payload is not the expected JSON: {e}") from None

    def text(self):
        """The payload as UTF-8 text."""
        try:
            return bytes(self.value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Error(f"payload is not UTF-8: {e}") from None

    def __repr__(self):
        return f"Event(key={self.key!r}, value={self.value!r}, time={self.time!r})"


class Config:
    """The operator's `config` table from the pipeline, parsed from JSON."""

    def __init__(self, value):
        self.json = value

    @classmethod
    def from_json(cls, text):
        if not text.strip():
            return cls({})
        try:
            return cls(loads(text))
        except ValueError as e:
            raise Error(f"config is not JSON: {e}") from None

    def get(self, field, tp=None, default=None):
        """One field converted to `tp` (see `decode`); `default` when missing
        or null; `Error` naming the field when it has the wrong type."""
        v = self.json.get(field) if isinstance(self.json, dict) else None
        if v is None:
            return default
        try:
            return decode(tp, v)
        except Error as e:
            raise Error(f"config field `{field}`: {e}") from None

    def parse(self, tp, deny_unknown=False):
        """The whole config as dataclass `tp` (give fields defaults for
        optional keys; `deny_unknown` rejects keys `tp` does not have)."""
        try:
            return decode(tp, self.json, deny_unknown)
        except Error as e:
            raise Error(f"invalid config: {e}") from None


_config = Config({})


def config():
    """The config given to `init`."""
    return _config


# ---- state -------------------------------------------------------------------


def _encode_state(what, value):
    try:
        return dumps(value).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise Error(f"cannot encode {what}: {e}") from None


def _decode_state(what, tp, data):
    try:
        return decode(tp, loads(data))
    except (ValueError, Error) as e:
        raise Error(f"state {what} does not decode: {e}") from None


class Value:
    """A single JSON value per key, stored under `name`. With `tp` (see
    `decode`), `get` converts the stored value to it."""

    def __init__(self, name, tp=None):
        self.name = name
        self.tp = tp
        self._decode = None  # what `decode(tp, v)` applies, found on first use

    def get(self, default=None):
        """The current key's value, or `default` when it has none."""
        data = _state.get(self.name)
        if data is None:
            return default
        dec = self._decode
        if dec is None:
            dec = self._decode = _field_decoder(self.tp)
        try:
            return dec(loads(data))
        except (ValueError, Error) as e:
            raise Error(f"state {self.name} does not decode: {e}") from None

    def set(self, value):
        _state.set(self.name, _encode_state(self.name, value))

    def delete(self):
        """Removes the value; returns whether there was one."""
        return _state.delete(self.name)


class Map:
    """A map from string fields to JSON values per key."""

    def __init__(self, name, tp=None):
        self.name = name
        self.tp = tp

    def get(self, field, default=None):
        data = _state.map_get(self.name, field)
        return default if data is None else _decode_state(self.name, self.tp, data)

    def set(self, field, value):
        _state.map_set(self.name, field, _encode_state(self.name, value))

    def delete(self, field):
        """Removes `field`; returns whether it existed."""
        return _state.map_delete(self.name, field)

    def range(self, start="", limit=100):
        """At most `limit` `(field, value)` pairs from field `start` on
        (inclusive; `""` for the first field), sorted by field. Only those
        are read, whatever the map's size: the next page starts at
        `field + "\\0"` after the last field returned."""
        return [(k, _decode_state(self.name, self.tp, b))
                for k, b in _state.map_range(self.name, start, limit)]

    def entries(self):
        """All `(field, value)` pairs, sorted by field (every field is
        read: page through a big map with `range`)."""
        return [(k, _decode_state(self.name, self.tp, b))
                for k, b in _state.map_entries(self.name)]

    def len(self):
        return _state.map_len(self.name)

    __len__ = len


class List:
    """An append-only list of JSON values per key, oldest first."""

    def __init__(self, name, tp=None):
        self.name = name
        self.tp = tp

    def push(self, item):
        """Appends `item`; returns the new length."""
        return _state.list_push(self.name, _encode_state(self.name, item))

    def len(self):
        return _state.list_len(self.name)

    __len__ = len

    def range(self, start, end):
        """Items with index in `[start, end)` (clamped), oldest first."""
        start = min(max(start, 0), _U32_MAX)
        end = min(max(end, 0), _U32_MAX)
        return [_decode_state(self.name, self.tp, b)
                for b in _state.list_range(self.name, start, end)]

    def all(self):
        return self.range(0, _U32_MAX)

    def last(self, n):
        """The newest `n` items, oldest first."""
        length = self.len()
        return self.range(max(length - n, 0), length)

    def trim(self, keep):
        """Keeps only the newest `keep` items; returns how many were dropped."""
        return _state.list_trim(self.name, min(max(keep, 0), _U32_MAX))


def clear_key():
    """Removes all state of the current key for this operator."""
    _state.clear()


# ---- output and log ------------------------------------------------------------


def emit(key, value):
    """Emits `value` encoded as JSON (see `dumps`), keyed by `key`."""
    _output.emit(key, _encode_state("emitted value", value))


def emit_raw(key, value):
    """Emits raw payload bytes keyed by `key`."""
    _output.emit(key, bytes(value))


class log:
    """Logging to the host's log, tagged with the operator and the key."""

    @staticmethod
    def debug(message):
        _wit_log.log(_wit_types.Level.DEBUG, str(message))

    @staticmethod
    def info(message):
        _wit_log.log(_wit_types.Level.INFO, str(message))

    @staticmethod
    def warn(message):
        _wit_log.log(_wit_types.Level.WARN, str(message))

    @staticmethod
    def error(message):
        _wit_log.log(_wit_types.Level.ERROR, str(message))


# ---- timers ------------------------------------------------------------------


class Timer:
    """A timer that fired, as `on_timer(self, timer)` receives it: `key` (the
    key it belongs to: state, timer and emit calls act on it), `name`, and
    `at`, the event time it was set for (the watermark is past it)."""

    __slots__ = ("key", "name", "at")

    def __init__(self, key, name, at):
        self.key = key
        self.name = name
        self.at = at

    def __repr__(self):
        return f"Timer(key={self.key!r}, name={self.name!r}, at={self.at!r})"


def _timer_call():
    """Timer calls are served on the per-event path: during a batch they
    hand the event to it (as map and list calls do)."""
    if _state is not _wit_state:
        _state.stop()


class timers:
    """Named event-time timers of the current key, and the watermark
    (`wit/timers.wit`).

    A name holds one pending time: a timeout is `timers.set("timeout", t)`,
    and setting it again replaces it. Once the watermark (the largest event
    time read so far minus the pipeline's `max_out_of_order`) is past `t`,
    or a file input has ended, the host calls the operator's
    `on_timer(self, timer)`. Timer changes, like state writes, take effect
    only when the call that made them succeeds. Calling these in `init`
    traps (no key is current)."""

    @staticmethod
    def set(name, at):
        """Sets timer `name` of the current key to fire at event time `at`
        (an int), replacing the pending one of that name. A time the
        watermark already passed fires at its next advance."""
        if isinstance(at, bool) or not isinstance(at, int):
            raise Error(f"timers.set({name!r}): the time must be an int, got {at!r}")
        if not -(1 << 63) <= at < (1 << 63):
            raise Error(f"timers.set({name!r}): the time {at} does not fit 64 bits")
        _timer_call()
        _wit_timers.set(name, int(at))

    @staticmethod
    def clear(name):
        """Cancels timer `name`; returns whether one was pending."""
        _timer_call()
        return _wit_timers.clear(name)

    @staticmethod
    def get(name):
        """When timer `name` of the current key fires (an int), or None
        when none is pending."""
        _timer_call()
        return _wit_timers.get(name)

    @staticmethod
    def list():
        """Every pending timer of the current key as `(name, at)` pairs,
        sorted by name."""
        _timer_call()
        return [(t.name, t.at) for t in _wit_timers.list()]

    @staticmethod
    def watermark():
        """The watermark: every event that is not late has a time at least
        this. -2**63 before the first event with a time (and when the
        pipeline names no time field), 2**63 - 1 once a file input ended."""
        _timer_call()
        return _wit_timers.watermark()

    @staticmethod
    def late():
        """Whether the event being handled is late: only ever true under
        `[source.watermark] late = "deliver"`, in `handle` of the first
        operator (a late event is never in a batch)."""
        if _state is not _wit_state:
            return False
        return _wit_timers.late()


# ---- the batched fast path --------------------------------------------------


class _Stop(BaseException):
    """Raised by map, list and `clear_key` calls during a batch: the batch
    carries only single values, so the event goes to the per-event path. A
    BaseException, so that an operator's `except Exception` lets it through."""


_MISSING = object()


class _Batch:
    """One `handle_batch` call. It stands in for the `state` and `output`
    imports while the operator handles the batch's events: single values are
    served from the batch (with the writes of earlier events of the batch),
    the current event's writes are kept in `pending` (first-write order) and
    its emits go straight into the result's columns; when the event ends
    they are kept (ok) or dropped (error, stop)."""

    __slots__ = (
        "view", "pending", "stopped", "key", "key_bytes", "emit_keys",
        "emit_key_ends", "emit_payloads", "emit_payload_ends",
    )

    def __init__(self):
        self.view = None  # the current key's values: name -> bytes or None
        self.pending = {}  # the current event's writes: name -> bytes or None
        self.stopped = False
        self.key = None  # the current event's key, and as bytes
        self.key_bytes = b""
        # The result's `emit-keys` and `emit-payloads` columns.
        self.emit_keys = bytearray()
        self.emit_key_ends = []
        self.emit_payloads = bytearray()
        self.emit_payload_ends = []

    # ---- state.* -------------------------------------------------------------

    def get(self, name):
        v = self.pending.get(name, _MISSING)
        return self.view.get(name) if v is _MISSING else v

    def set(self, name, value):
        self.pending[name] = value

    def delete(self, name):
        existed = self.get(name) is not None
        self.pending[name] = None
        return existed

    def stop(self, *_args):
        self.stopped = True
        raise _Stop()

    map_get = map_set = map_delete = map_entries = map_range = map_len = stop
    list_push = list_len = list_range = list_trim = clear = stop

    # ---- output.emit ---------------------------------------------------------

    def emit(self, key, value):
        keys = self.emit_keys
        keys += self.key_bytes if key == self.key else key.encode()
        self.emit_key_ends.append(len(keys))
        payloads = self.emit_payloads
        payloads += value
        self.emit_payload_ends.append(len(payloads))


def _run_batch(batch, handle):
    """Runs `handle` on every event of `batch` as the per-event path would
    (same state, same emits, same errors); returns the `BatchResult`.

    The batch and the result are columns (`wit/batch.wit`): byte strings in
    one buffer with their end offsets, and lists of numbers. The result's
    byte columns are built in bytearrays."""
    global _state, _output
    keys = batch.keys
    key_data, key_ends = keys.bytes, keys.ends
    value_counts = batch.value_counts
    names, values = batch.value_names, batch.value_bytes
    name_data, name_ends = names.bytes, names.ends
    value_data, value_ends = values.bytes, values.ends
    payloads = batch.payloads
    payload_data, payload_ends = payloads.bytes, payloads.ends
    # Event times: `times[t]` is the time of event `timed[t]`; the others
    # have none.
    timed, times = batch.timed, batch.times
    t = 0
    next_timed = timed[0] if timed else -1
    nkeys = len(key_ends)
    first_values = [0]  # per key, the index of its first value
    for n in value_counts:
        first_values.append(first_values[-1] + n)
    key_names = [None] * nkeys
    key_bytes = [None] * nkeys
    views = [None] * nkeys
    name_bytes = {}  # value name -> its UTF-8 bytes
    b = _Batch()
    pending = b.pending
    emit_keys, emit_key_ends = b.emit_keys, b.emit_key_ends
    emit_payloads, emit_payload_ends = b.emit_payloads, b.emit_payload_ends
    emit_counts = []
    write_counts = []
    write_names = bytearray()
    write_name_ends = []
    write_values = bytearray()
    write_value_ends = []
    deletes = []
    failed = []
    reasons = bytearray()
    reason_ends = []
    stop = False
    start = 0  # of the event's payload
    _state = _output = b
    try:
        for i, k in enumerate(batch.event_keys):
            view = views[k]
            if view is None:
                raw = key_bytes[k] = key_data[key_ends[k - 1] if k else 0:key_ends[k]]
                key = key_names[k] = raw.decode()
                view = views[k] = {}
                for j in range(first_values[k], first_values[k + 1]):
                    a = name_ends[j - 1] if j else 0
                    c = value_ends[j - 1] if j else 0
                    view[name_data[a:name_ends[j]].decode()] = value_data[c:value_ends[j]]
            else:
                key = key_names[k]
            b.view = view
            b.key = key
            b.key_bytes = key_bytes[k]
            end = payload_ends[i]
            emit_mark = len(emit_key_ends)
            if i == next_timed:
                time = times[t]
                t += 1
                next_timed = timed[t] if t < len(timed) else -1
            else:
                time = None
            reason = None
            try:
                handle(Event(key, payload_data[start:end], time))
            except _Stop:
                pass
            except Exception as e:
                reason = _reason(e)
            start = end
            if b.stopped or reason is not None:
                # Nothing of the event takes effect.
                pending.clear()
                if len(emit_key_ends) > emit_mark:
                    del emit_keys[emit_key_ends[emit_mark - 1] if emit_mark else 0:]
                    del emit_payloads[emit_payload_ends[emit_mark - 1] if emit_mark else 0:]
                    del emit_key_ends[emit_mark:], emit_payload_ends[emit_mark:]
                if b.stopped:
                    stop = True
                    break
                failed.append(i)
                reasons += reason.encode("utf-8", "replace")
                reason_ends.append(len(reasons))
                emit_counts.append(0)
                write_counts.append(0)
                continue
            emit_counts.append(len(emit_key_ends) - emit_mark)
            write_counts.append(len(pending))
            if pending:
                for name, value in pending.items():
                    n = name_bytes.get(name)
                    if n is None:
                        n = name_bytes[name] = name.encode()
                    write_names += n
                    write_name_ends.append(len(write_names))
                    if value is None:
                        deletes.append(len(write_value_ends))
                    else:
                        write_values += value
                    write_value_ends.append(len(write_values))
                    view[name] = value
                pending.clear()
    finally:
        _state = _wit_state
        _output = _wit_output
    strings = _wit_batch.Strings
    return _wit_batch.BatchResult(
        emit_counts=emit_counts,
        write_counts=write_counts,
        emit_keys=strings(bytes(emit_keys), emit_key_ends),
        emit_payloads=strings(bytes(emit_payloads), emit_payload_ends),
        write_names=strings(bytes(write_names), write_name_ends),
        write_values=strings(bytes(write_values), write_value_ends),
        deletes=deletes,
        failed=failed,
        reasons=strings(bytes(reasons), reason_ends),
        stop=stop,
    )


# ---- export ----------------------------------------------------------------------


def _reason(e):
    if isinstance(e, Error):
        return str(e)
    return f"{type(e).__name__}: {e}"


def export(cls):
    """Returns the component's export class for operator class `cls`; bind it
    as `WitWorld` at the top level of the app module:

        WitWorld = eddy.export(MyOperator)

    `init` makes one `cls()` and calls its `init(config)`; `handle` calls its
    `handle(event)`, and `handle_batch` (the batched fast path) calls it on
    each event of a batch; `on_timer` (a timer fired) calls its
    `on_timer(timer)` with an `eddy.Timer`, and fails naming the timer when
    the class defines none. An exception from any becomes the `err` result
    (for `handle_batch`: that event's `failed` outcome)."""
    import wit_world

    instance = []

    class WitWorld(wit_world.WitWorld):
        def init(self, config_text):
            global _config
            try:
                _config = Config.from_json(config_text)
                op = cls()
                if hasattr(op, "init"):
                    op.init(_config)
            except Exception as e:
                raise _Err(_reason(e))
            instance[:] = [op]

        def handle(self, event):
            if not instance:
                raise _Err("handle called before init")
            try:
                instance[0].handle(Event(event.key, event.value, event.time))
            except Exception as e:
                raise _Err(_reason(e))

        def on_timer(self, key, name, at):
            if not instance:
                raise _Err("on-timer called before init")
            op = instance[0]
            handler = getattr(op, "on_timer", None)
            if handler is None:
                raise _Err(
                    f"timer `{name}` of key `{key}` fired, but this operator does not "
                    "handle timers (define `on_timer(self, timer)`)"
                )
            try:
                handler(Timer(key, name, at))
            except Exception as e:
                raise _Err(_reason(e))

        def handle_batch(self, batch):
            if not instance:
                # A trap: the host replays the batch with `handle`.
                raise RuntimeError("handle-batch called before init")
            return _run_batch(batch, instance[0].handle)

    return WitWorld


# ---- window aggregates ---------------------------------------------------------


class WindowEvent:
    """An event being folded into its window, as `add(self, acc, event)`
    receives it: `value` (the payload bytes) and `time` (its event time, an
    int). `json(tp)` and `text()` read the payload as `Event`'s do."""

    __slots__ = ("value", "time")

    def __init__(self, value, time):
        self.value = value
        self.time = time

    json = Event.json
    text = Event.text

    def __repr__(self):
        return f"WindowEvent(value={self.value!r}, time={self.time!r})"


class Window:
    """A window being finished, as `finish(self, window, acc)` receives it:
    `key` (what it emits goes out under it), `start` (its first event time,
    inclusive; a session's first event's time) and `end` (exclusive; a
    session's last event's time plus the gap)."""

    __slots__ = ("key", "start", "end")

    def __init__(self, key, start, end):
        self.key = key
        self.start = start
        self.end = end

    def __repr__(self):
        return f"Window(key={self.key!r}, start={self.start!r}, end={self.end!r})"


def _decode_acc(tp, data):
    """Accumulator bytes as `tp`; `Error` naming the problem."""
    try:
        return decode(tp, loads(data))
    except (ValueError, Error) as e:
        raise Error(f"a window accumulator does not decode: {e}") from None


def _encode_acc(acc):
    try:
        return dumps(acc).encode()
    except (TypeError, ValueError) as e:
        # A trap: the host replays the call event by event, and each event
        # is dead-lettered with this reason.
        raise RuntimeError(f"cannot encode a window accumulator: {e}") from None


def _run_add(agg, adds, tp):
    """Folds the events of `adds` into their accumulators (`wit/window.wit`):
    each accumulator is decoded once and encoded once per call, whatever
    the number of its events. An event whose `add` raises is left out: its
    accumulator is rebuilt from the call's input and the accumulator's
    earlier events that did not fail (so nothing is copied per event, and
    a failure costs a replay of that accumulator's events)."""
    column = adds.accumulators
    data, ends = column.bytes, column.ends
    n = len(ends)
    fresh = set(adds.fresh)
    accs = [None] * n
    broken = {}  # accumulator index -> why it does not decode

    def original(i):
        if i in fresh:
            return agg.create()
        return _decode_acc(tp, data[ends[i - 1] if i else 0:ends[i]])

    for i in range(n):
        try:
            accs[i] = original(i)
        except Error as e:
            broken[i] = str(e)
    targets, times = adds.targets, adds.times
    payloads = adds.payloads
    payload_data, payload_ends = payloads.bytes, payloads.ends
    add = agg.add
    failed = []
    failed_set = set()
    reasons = bytearray()
    reason_ends = []
    start = 0
    for k, t in enumerate(targets):
        end = payload_ends[k]
        if t >= n:
            reason = f"event {k}: no accumulator {t}"
        elif t in broken:
            reason = broken[t]
        else:
            try:
                r = add(accs[t], WindowEvent(payload_data[start:end], times[k]))
                if r is not None:
                    accs[t] = r
                start = end
                continue
            except Exception as e:
                reason = _reason(e)
            # Put the accumulator back as it was before this event.
            acc = original(t)
            at = 0
            for j in range(k):
                stop = payload_ends[j]
                if targets[j] == t and j not in failed_set:
                    r = add(acc, WindowEvent(payload_data[at:stop], times[j]))
                    if r is not None:
                        acc = r
                at = stop
            accs[t] = acc
        start = end
        failed.append(k)
        failed_set.add(k)
        reasons += reason.encode("utf-8", "replace")
        reason_ends.append(len(reasons))
    out = bytearray()
    out_ends = []
    for i in range(n):
        if i in broken:
            # Handed back as it came.
            out += data[ends[i - 1] if i else 0:ends[i]]
        else:
            out += _encode_acc(accs[i])
        out_ends.append(len(out))
    strings = _wit_batch.Strings
    return _wit_window.Added(
        accumulators=strings(bytes(out), out_ends),
        failed=failed,
        reasons=strings(bytes(reasons), reason_ends),
    )


def _merged(agg, column, tp):
    """The accumulators of `column` decoded and merged, oldest first."""
    data, ends = column.bytes, column.ends
    acc = None
    for i in range(len(ends)):
        nxt = _decode_acc(tp, data[ends[i - 1] if i else 0:ends[i]])
        if i == 0:
            acc = nxt
        else:
            r = agg.merge(acc, nxt)
            if r is not None:
                acc = r
    return agg.create() if not ends else acc


def export_window(cls, accumulator=None):
    """Returns the component's export class for window aggregate class
    `cls` (world `window-operator`, which `eddy build` picks for a source
    that calls `export_window`); bind it as `WitWorld` at the top level of the app
    module:

        WitWorld = eddy.export_window(Spend, Totals)

    `accumulator` is the accumulator's type, as `decode` takes it (a
    dataclass, `float`, `list`, ...; None: any JSON): accumulators are
    stored by the host as their JSON (`dumps`) and decoded as this type.
    `cls` has

    - `init(self, config)` (optional): once, with the pipeline's config;
    - `create(self)`: the empty accumulator, that a window's first event is
      added to;
    - `add(self, acc, event)`: folds `event` (a `WindowEvent`) into `acc`,
      in place or by returning the new accumulator (None keeps `acc`). An
      exception dead-letters the event, and the window's accumulator is
      then as it was before the event;
    - `merge(self, acc, other)`: merges `other` into `acc` (a hopping
      window's panes, oldest first, or the sessions an event bridges),
      in place or by returning the result;
    - `finish(self, window, acc)`: what window `window` (a `Window`) emits,
      encoded with `dumps` (bytes are emitted as they are), or None to emit
      nothing. An exception dead-letters the firing.

    One instance serves every key and window: keep per-window data in the
    accumulator. Each `add` call decodes and encodes every accumulator it
    is handed once, however many events it folds into it."""
    import wit_world

    instance = []

    class WitWorld(wit_world.WitWorld):
        def init(self, config_text):
            global _config
            try:
                _config = Config.from_json(config_text)
                agg = cls()
                if hasattr(agg, "init"):
                    agg.init(_config)
            except Exception as e:
                raise _Err(_reason(e))
            instance[:] = [agg]

        def add(self, adds):
            if not instance:
                # A trap: the host replays the call event by event.
                raise RuntimeError("add called before init")
            return _run_add(instance[0], adds, accumulator)

        def merge(self, accumulators):
            if not instance:
                raise _Err("merge called before init")
            try:
                return _encode_acc(_merged(instance[0], accumulators, accumulator))
            except Exception as e:
                raise _Err(_reason(e))

        def finish(self, window, accumulators):
            if not instance:
                raise _Err("finish called before init")
            agg = instance[0]
            try:
                acc = _merged(agg, accumulators, accumulator)
                out = agg.finish(Window(window.key, window.start, window.end), acc)
                if out is None:
                    return None
                if isinstance(out, (bytes, bytearray)):
                    return bytes(out)
                try:
                    return dumps(out).encode()
                except (TypeError, ValueError) as e:
                    raise Error(f"cannot encode the window's output: {e}") from None
            except Exception as e:
                raise _Err(_reason(e))

    return WitWorld
