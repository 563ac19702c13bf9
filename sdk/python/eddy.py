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
"""

import dataclasses
import json
import math
import types
import typing

try:  # present inside the component (componentize-py generates it)
    from componentize_py_types import Err as _Err
    from wit_world.imports import log as _wit_log
    from wit_world.imports import output as _wit_output
    from wit_world.imports import state as _wit_state
    from wit_world.imports import types as _wit_types
except ImportError:  # plain CPython, e.g. to test `dumps`
    _Err = _wit_log = _wit_output = _wit_state = _wit_types = None

__all__ = [
    "Error", "Event", "Config", "Value", "Map", "List",
    "emit", "emit_raw", "clear_key", "config", "log",
    "dumps", "loads", "decode", "number", "export", "i64", "u64", "u32",
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
    if x != x or x in (math.inf, -math.inf):
        return "null"
    if x == 0.0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    # repr gives the shortest round-trip digits; only the layout differs.
    r = repr(x)
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
        floats = _float_fields(type(o))
        out.append("{")
        for i, f in enumerate(dataclasses.fields(o)):
            v = getattr(o, f.name)
            if f.name in floats and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if i:
                out.append(",")
            out.append(_encode_str(f.name))
            out.append(":")
            _encode(v, out)
        out.append("}")
    else:
        raise TypeError(f"cannot encode a {type(o).__name__} as JSON")


def dumps(obj):
    """Encodes `obj` as compact JSON text, exactly as serde_json would."""
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


_decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads(data):
    """Parses JSON text (str or UTF-8 bytes) strictly, as serde_json does:
    no NaN/Infinity, no trailing text."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _decoder.decode(data)


def number(v, default=0.0):
    """`v` as a float when it is a JSON number (not a bool), else `default`."""
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
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp) and type(None) in args:
        if v is None:
            return None
        rest = [a for a in args if a is not type(None)]
        return decode(rest[0] if len(rest) == 1 else None, v, deny_unknown)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise Error(f"invalid type: {_type_name(v)}, expected struct {tp.__name__}")
        fields = dataclasses.fields(tp)
        if deny_unknown:
            names = [f.name for f in fields]
            for k in v:
                if k not in names:
                    expected = ", ".join(f"`{n}`" for n in names)
                    raise Error(f"unknown field `{k}`, expected one of {expected}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in fields:
            kwargs[f.name] = decode(hints[f.name], v[f.name]) if f.name in v else _missing(f)
        return tp(**kwargs)
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Error(f"invalid type: {_type_name(v)}, expected f64")
        return float(v)
    if tp is int or tp in _INT_RANGES:
        name, lo, hi = _INT_RANGES.get(tp, ("an integer", None, None))
        if isinstance(v, bool) or not isinstance(v, int):
            raise Error(f"invalid type: {_type_name(v)}, expected {name}")
        if lo is not None and not lo <= v <= hi:
            raise Error(f"invalid value: integer `{v}`, expected {name}")
        return int(v)
    if tp in (str, bool):
        if type(v) is not tp:
            expected = "a string" if tp is str else "a boolean"
            raise Error(f"invalid type: {_type_name(v)}, expected {expected}")
        return v
    if tp is list or origin is list:
        if not isinstance(v, list):
            raise Error(f"invalid type: {_type_name(v)}, expected a sequence")
        item = args[0] if args else None
        return [decode(item, x) for x in v]
    if tp is dict or origin is dict:
        if not isinstance(v, dict):
            raise Error(f"invalid type: {_type_name(v)}, expected a map")
        item = args[1] if len(args) == 2 else None
        return {k: decode(item, x) for k, x in v.items()}
    return v


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

    def get(self, default=None):
        """The current key's value, or `default` when it has none."""
        data = _wit_state.get(self.name)
        return default if data is None else _decode_state(self.name, self.tp, data)

    def set(self, value):
        _wit_state.set(self.name, _encode_state(self.name, value))

    def delete(self):
        """Removes the value; returns whether there was one."""
        return _wit_state.delete(self.name)


class Map:
    """A map from string fields to JSON values per key."""

    def __init__(self, name, tp=None):
        self.name = name
        self.tp = tp

    def get(self, field, default=None):
        data = _wit_state.map_get(self.name, field)
        return default if data is None else _decode_state(self.name, self.tp, data)

    def set(self, field, value):
        _wit_state.map_set(self.name, field, _encode_state(self.name, value))

    def delete(self, field):
        """Removes `field`; returns whether it existed."""
        return _wit_state.map_delete(self.name, field)

    def entries(self):
        """All `(field, value)` pairs, sorted by field."""
        return [(k, _decode_state(self.name, self.tp, b))
                for k, b in _wit_state.map_entries(self.name)]

    def len(self):
        return _wit_state.map_len(self.name)

    __len__ = len


class List:
    """An append-only list of JSON values per key, oldest first."""

    def __init__(self, name, tp=None):
        self.name = name
        self.tp = tp

    def push(self, item):
        """Appends `item`; returns the new length."""
        return _wit_state.list_push(self.name, _encode_state(self.name, item))

    def len(self):
        return _wit_state.list_len(self.name)

    __len__ = len

    def range(self, start, end):
        """Items with index in `[start, end)` (clamped), oldest first."""
        start = min(max(start, 0), _U32_MAX)
        end = min(max(end, 0), _U32_MAX)
        return [_decode_state(self.name, self.tp, b)
                for b in _wit_state.list_range(self.name, start, end)]

    def all(self):
        return self.range(0, _U32_MAX)

    def last(self, n):
        """The newest `n` items, oldest first."""
        length = self.len()
        return self.range(max(length - n, 0), length)

    def trim(self, keep):
        """Keeps only the newest `keep` items; returns how many were dropped."""
        return _wit_state.list_trim(self.name, min(max(keep, 0), _U32_MAX))


def clear_key():
    """Removes all state of the current key for this operator."""
    _wit_state.clear()


# ---- output and log ------------------------------------------------------------


def emit(key, value):
    """Emits `value` encoded as JSON (see `dumps`), keyed by `key`."""
    _wit_output.emit(key, _encode_state("emitted value", value))


def emit_raw(key, value):
    """Emits raw payload bytes keyed by `key`."""
    _wit_output.emit(key, bytes(value))


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
    `handle(event)`. An exception from either becomes the `err` result."""
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

    return WitWorld
