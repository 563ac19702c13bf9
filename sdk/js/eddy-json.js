// eddy-json.js: what every Eddy JavaScript module shares, with no host
// interface but `log`: shapes, JSON written and read exactly as serde_json
// does (the shapes are described below), errors, logging, events and
// config.
//
// Operators import it through `eddy.js` (keyed operators) or
// `eddy-window.js` (window aggregates), which re-export its public names;
// the names exported at the end of this file for those two modules only
// are internal.

import { log as hostLog } from 'eddy:operator/log@0.3.0';
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------
// Shapes
//
// A shape describes a JSON value the way a Rust type does:
//   'f64' / 'f32'                       float: always printed with a decimal
//                                       point or exponent (40.0, 1e+16)
//   'i64' 'u64' 'i32' 'u32' 'i16' 'u16' 'i8' 'u8'
//                                       integer, range-checked when decoded
//   'string', 'bool'
//   'any'                               any JSON (numbers print as integers
//                                       when integral, else as floats)
//   'object'                            any JSON object
//   'T?'                                Option<T>: null (or missing field)
//   [T]                                 Vec<T>
//   struct(name, fields, options)       a Rust struct: field order, names,
//                                       defaults, unknown-field policy
//   { field: T, ... }                   an anonymous struct
//
// Decoded values are plain JavaScript values: numbers (BigInt for integers
// beyond 2^53), strings, booleans, null, arrays and objects.

const INT_RANGES = {
  i8: [-128n, 127n], u8: [0n, 255n],
  i16: [-32768n, 32767n], u16: [0n, 65535n],
  i32: [-2147483648n, 2147483647n], u32: [0n, 4294967295n],
  i64: [-(2n ** 63n), 2n ** 63n - 1n], u64: [0n, 2n ** 64n - 1n],
};

// Field kinds, precomputed so the hot paths do not re-read shape strings.
const K_OTHER = 0;
const K_FLOAT = 1;
const K_INT = 2;
const K_STRING = 3;
function kindOf(shape) {
  if (shape === 'f64' || shape === 'f32') return K_FLOAT;
  if (shape === 'string') return K_STRING;
  if (typeof shape === 'string' && shape in INT_RANGES) return K_INT;
  return K_OTHER;
}

class StructShape {
  constructor(name, fields, options = {}) {
    this.name = name;
    this.fields = fields;
    this.keys = Object.keys(fields);
    this.defaults = options.default ?? null;
    this.denyUnknown = !!options.denyUnknownFields;
    // Written as `{"a":` `,"b":` ...; the field names as they appear quoted.
    this.prefixes = this.keys.map((k, i) => (i ? ',' : '{') + JSON.stringify(k) + ':');
    this.quoted = this.keys.map((k) => JSON.stringify(k));
    // Flat structs (fields of shape strings only) can be checked on a
    // parsed tree; for integer fields, the text after the field's name
    // confirms the number was written as an integer (serde refuses `5.0`
    // or `-0` there, JSON.parse cannot tell).
    this.flat = this.keys.every((k) => typeof fields[k] === 'string');
    this.kinds = this.keys.map((k) => kindOf(fields[k]));
    // For integer fields (also optional ones), the integer shape.
    this.intShapes = this.keys.map((k) => {
      const base = typeof fields[k] === 'string' ? fields[k].replace(/\?$/, '') : '';
      return base in INT_RANGES ? base : null;
    });
    this.checker = undefined;
    this.writer = undefined;
  }

  // Whether the struct's functions can be generated: every field a float,
  // an integer or a string (not optional), named so that an object literal
  // keeps it as a plain property, and no unknown-field policy.
  generated() {
    return this.keys.length !== 0 && !this.denyUnknown
      && this.kinds.every((k) => k !== K_OTHER)
      && this.keys.every((k) => k !== '__proto__');
  }

  /**
   * `check` for this struct as a function generated for its fields (or
   * null): the field names, quoted keys and integer ranges written in as
   * constants and no loop, since each statement costs in an interpreter.
   * Anything unusual (a missing or mistyped field) goes to the general
   * `checkStruct`, which gives the same result.
   */
  fastCheck() {
    if (this.checker !== undefined) return this.checker;
    if (!this.generated()) return (this.checker = null);
    const lit = JSON.stringify;
    let body = 'return function (v, text, escapes) {\n'
      + '  if (v === null || typeof v !== "object" || Array.isArray(v) || escapes) return general(v, text, escapes);\n';
    this.keys.forEach((k, i) => {
      const q = lit(this.quoted[i]);
      body += `  const a${i} = text.indexOf(${q});\n`
        + `  if (a${i} >= 0 && text.indexOf(${q}, a${i} + 1) >= 0) return NO;\n`
        + `  const x${i} = v[${lit(k)}];\n`;
      const x = `x${i}`;
      if (this.kinds[i] === K_FLOAT) {
        body += `  if (typeof ${x} !== "number" || ${x} - ${x} !== 0) return general(v, text, escapes);\n`;
      } else if (this.kinds[i] === K_STRING) {
        body += `  if (typeof ${x} !== "string") return general(v, text, escapes);\n`;
      } else {
        const [lo, hi] = INT_LIMITS[this.fields[k]];
        body += `  if (typeof ${x} !== "number" || ${x} % 1 !== 0 || ${x} < ${Math.max(lo, -MAX_SAFE)} || ${x} > ${Math.min(hi, MAX_SAFE)}`
          + ` || a${i} < 0 || !intLiteralAt(text, a${i}, ${q}, ${x})) return general(v, text, escapes);\n`;
      }
    });
    body += `  return { ${this.keys.map((k, i) => `${lit(k)}: x${i}`).join(', ')} };\n};`;
    const general = (v, text, escapes) => checkStruct(v, this, text, escapes, 0);
    return (this.checker = new Function('general', 'NO', 'intLiteralAt', body)(general, NO, intLiteralAt));
  }

  /** `writeStruct` for this struct as a generated function (or null); see `fastCheck`. */
  fastWrite() {
    if (this.writer !== undefined) return this.writer;
    if (!this.generated()) return (this.writer = null);
    const lit = JSON.stringify;
    const conds = [];
    const pieces = [];
    this.keys.forEach((k, i) => {
      const x = `x${i}`;
      if (this.kinds[i] === K_FLOAT) {
        conds.push(`typeof ${x} === "number"`);
        pieces.push(`${lit(this.prefixes[i])} + formatFloat(${x})`);
      } else if (this.kinds[i] === K_STRING) {
        conds.push(`typeof ${x} === "string"`);
        pieces.push(`${lit(this.prefixes[i])} + JSON.stringify(${x})`);
      } else {
        conds.push(`typeof ${x} === "number" && ${x} % 1 === 0 && ${x} <= ${MAX_SAFE} && ${x} >= ${-MAX_SAFE}`);
        pieces.push(`${lit(this.prefixes[i])} + ${x}`);
      }
    });
    const body = 'return function (v, what) {\n'
      + '  if (v === null || typeof v !== "object") return general(v, what);\n'
      + this.keys.map((k, i) => `  const x${i} = v[${lit(k)}];\n`).join('')
      + `  if (${conds.join(' && ')}) return ${pieces.join(' + ')} + "}";\n`
      + '  return general(v, what);\n};';
    const general = (v, what) => writeFields(v, this, what);
    return (this.writer = new Function('general', 'formatFloat', body)(general, formatFloat));
  }
}

/**
 * A struct shape: `struct('Entry', { ts: 'i64', amount: 'f64' })`.
 * Options: `default` (an object of field defaults, like
 * `#[serde(default)]` on the struct) and `denyUnknownFields`.
 */
export function struct(name, fields, options) {
  return new StructShape(name, fields, options);
}

function asStruct(shape) {
  if (shape instanceof StructShape) return shape;
  if (shape && typeof shape === 'object' && !Array.isArray(shape)) {
    let s = ANON.get(shape);
    if (!s) {
      s = new StructShape(null, shape);
      ANON.set(shape, s);
    }
    return s;
  }
  return null;
}
const ANON = new WeakMap();

function expecting(shape) {
  if (typeof shape === 'string') {
    if (shape.endsWith('?')) return expecting(shape.slice(0, -1));
    switch (shape) {
      case 'string': return 'a string';
      case 'bool': return 'a boolean';
      case 'object': return 'a JSON object';
      case 'any': return 'any valid JSON value';
      default: return shape;
    }
  }
  if (Array.isArray(shape)) return 'a sequence';
  const s = asStruct(shape);
  return s && s.name ? `struct ${s.name}` : 'a JSON object';
}

// ---------------------------------------------------------------------------
// Writing JSON like serde_json

/** A number to be written as a float (`40.0`), for values without a shape. */
export class F64 {
  constructor(value) { this.value = Number(value); }
  valueOf() { return this.value; }
  toJSON() { return this.value; }
}
/** Marks `x` as a float: `emit(key, { avg: f64(avg) })` prints `avg` as `2.0`. */
export function f64(x) { return new F64(x); }

/**
 * Formats a finite number like serde_json (shortest round-trip digits, the
 * decimal point always present, exponent form outside 1e-5..1e16 written
 * `1e+16`, `1.5e-7`). Non-finite numbers give `null`, as in serde_json.
 */
export function formatFloat(x) {
  // Fast paths, with operators rather than calls (which cost more in an
  // interpreter): in this range both print the same digits in fixed
  // notation. `x % 1` is NaN for NaN and infinities.
  if (x % 1 === 0) {
    if (x < 1e16 && x > -1e16) {
      if (x !== 0) return '' + x + '.0';
      return 1 / x < 0 ? '-0.0' : '0.0';
    }
  } else if (x - x !== 0) {
    return 'null';
  } else if ((x >= 1e-5 && x < 1e16) || (x <= -1e-5 && x > -1e16)) {
    return '' + x;
  }
  const sign = x < 0 ? '-' : '';
  // Number-to-string gives the shortest digits that round-trip, picking the
  // closest when there are several; only the layout differs from serde_json.
  let s = String(Math.abs(x));
  let exp = 0;
  const e = s.indexOf('e');
  if (e >= 0) {
    exp = Number(s.slice(e + 1));
    s = s.slice(0, e);
  }
  const dot = s.indexOf('.');
  const intPart = dot < 0 ? s : s.slice(0, dot);
  let digits = intPart + (dot < 0 ? '' : s.slice(dot + 1));
  let point = intPart.length + exp; // value = 0.DIGITS * 10^point
  let lead = 0;
  while (digits.charCodeAt(lead) === 48) lead++;
  digits = digits.slice(lead);
  point -= lead;
  let end = digits.length;
  while (end > 1 && digits.charCodeAt(end - 1) === 48) end--;
  digits = digits.slice(0, end);
  const n = digits.length;
  const sci = point - 1; // value = D.IGITS * 10^sci
  if (sci >= -5 && sci <= 15) {
    if (n <= point) return sign + digits + '0'.repeat(point - n) + '.0';
    if (point > 0) return sign + digits.slice(0, point) + '.' + digits.slice(point);
    return sign + '0.' + '0'.repeat(-point) + digits;
  }
  const mant = n > 1 ? digits[0] + '.' + digits.slice(1) : digits;
  return sign + mant + (sci < 0 ? 'e-' : 'e+') + Math.abs(sci);
}

function formatInt(x, what) {
  if (typeof x === 'bigint') return x.toString();
  if (typeof x === 'number' && Number.isInteger(x)) {
    return Number.isSafeInteger(x) ? String(x) : BigInt(x).toString();
  }
  throw new EncodeError(`${what}: expected an integer, got ${String(x)}`);
}

class EncodeError extends Error {}

function writeString(s) {
  // JSON.stringify escapes exactly what serde_json escapes (", \, control
  // characters, with \b \t \n \f \r short forms and lowercase \u00XX).
  return JSON.stringify(s);
}

function writeAny(v) {
  switch (typeof v) {
    case 'number':
      if (Number.isInteger(v)) return Number.isSafeInteger(v) ? String(v) : formatFloat(v);
      return formatFloat(v);
    case 'bigint': return v.toString();
    case 'string': return writeString(v);
    case 'boolean': return v ? 'true' : 'false';
    case 'undefined': return 'null';
    case 'object': {
      if (v === null) return 'null';
      if (v instanceof F64) return formatFloat(v.value);
      if (Array.isArray(v)) return '[' + v.map(writeAny).join(',') + ']';
      let out = '{';
      let first = true;
      for (const k of Object.keys(v)) {
        const x = v[k];
        if (x === undefined || typeof x === 'function') continue;
        out += (first ? '' : ',') + writeString(k) + ':' + writeAny(x);
        first = false;
      }
      return out + '}';
    }
    default:
      throw new EncodeError(`cannot write a ${typeof v} as JSON`);
  }
}

const MAX_SAFE = 9007199254740991;

function write(v, shape, what) {
  if (shape instanceof StructShape) return writeStruct(v, shape, what);
  if (shape === undefined || shape === 'any' || shape === 'object') return writeAny(v);
  if (typeof shape === 'string') {
    if (shape.endsWith('?')) return v == null ? 'null' : write(v, shape.slice(0, -1), what);
    if (shape === 'f64' || shape === 'f32') {
      if (v instanceof F64) return formatFloat(v.value);
      if (typeof v === 'number') return formatFloat(v);
      if (typeof v === 'bigint') return formatFloat(Number(v));
      throw new EncodeError(`${what}: expected a number, got ${typeof v}`);
    }
    if (INT_RANGES[shape] !== undefined) {
      if (typeof v === 'number' && v <= 9007199254740991 && v >= -9007199254740991 && Number.isInteger(v)) return String(v);
      return formatInt(v instanceof F64 ? v.value : v, what);
    }
    if (shape === 'string') {
      if (typeof v !== 'string') throw new EncodeError(`${what}: expected a string, got ${typeof v}`);
      return writeString(v);
    }
    if (shape === 'bool') {
      if (typeof v !== 'boolean') throw new EncodeError(`${what}: expected a boolean, got ${typeof v}`);
      return v ? 'true' : 'false';
    }
    throw new EncodeError(`unknown shape '${shape}'`);
  }
  if (Array.isArray(shape)) {
    if (!Array.isArray(v)) throw new EncodeError(`${what}: expected an array`);
    return '[' + v.map((x) => write(x, shape[0], what)).join(',') + ']';
  }
  return writeStruct(v, asStruct(shape), what);
}

function writeStruct(v, s, what) {
  const fast = s.fastWrite();
  return fast !== null ? fast(v, what) : writeFields(v, s, what);
}

function writeFields(v, s, what) {
  if (v === null || typeof v !== 'object') throw new EncodeError(`${what}: expected an object`);
  const { keys, kinds, prefixes } = s;
  const n = keys.length;
  if (n === 0) return '{}';
  let out = '';
  for (let i = 0; i < n; i++) {
    const x = v[keys[i]];
    const kind = kinds[i];
    let piece;
    if (typeof x === 'number' && kind === K_FLOAT) piece = formatFloat(x);
    else if (typeof x === 'number' && kind === K_INT && x % 1 === 0 && x <= MAX_SAFE && x >= -MAX_SAFE) piece = '' + x;
    else if (kind === K_STRING && typeof x === 'string') piece = JSON.stringify(x);
    else piece = write(x, s.fields[keys[i]], what);
    out += prefixes[i] + piece;
  }
  return out + '}';
}

/** JSON text of `value` as serde_json would write the Rust type `shape`. */
export function toJson(value, shape) {
  return write(value, shape, 'value');
}

/** JSON text of `value` written as `shape`, for a state value or an emit. */
function encodeText(what, value, shape) {
  try {
    return write(value, shape, what);
  } catch (e) {
    if (e instanceof EncodeError) throw new OperatorError(`cannot encode ${what}: ${e.message}`);
    throw e;
  }
}

/** The UTF-8 bytes of `encodeText`, for a host call. */
function encode(what, value, shape) {
  return utf8Encoder.encode(encodeText(what, value, shape));
}

// ---------------------------------------------------------------------------
// Reading JSON like serde_json (same numbers, same error messages)

/** A JSON decoding error; `message` ends with "at line L column C" when known. */
export class JsonError extends Error {}

const U64_MAX = 2n ** 64n - 1n;
const TWO53 = 2 ** 53;

function rustDebugStr(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c === 0) out += '\\0';
    else if (c < 0x20 || c === 0x7f) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return out + '"';
}

class Reader {
  constructor(bytes, positions) {
    this.b = bytes;
    this.i = 0;
    this.depth = 0;
    this.positions = positions;
  }

  // serde_json reports `error` at the current index and `peek_error` one
  // byte further (capped at the end).
  fail(msg, index = this.i) {
    if (!this.positions) throw new JsonError(msg);
    const b = this.b;
    let lineStart = 0;
    let line = 1;
    for (let k = 0; k < index; k++) {
      if (b[k] === 10) {
        line++;
        lineStart = k + 1;
      }
    }
    throw new JsonError(`${msg} at line ${line} column ${index - lineStart}`);
  }
  peekFail(msg) {
    this.fail(msg, Math.min(this.b.length, this.i + 1));
  }

  ws() {
    const b = this.b;
    let i = this.i;
    while (i < b.length) {
      const c = b[i];
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else break;
    }
    this.i = i;
    return i < b.length ? b[i] : -1;
  }

  end() {
    if (this.ws() !== -1) this.peekFail('trailing characters');
  }

  ident(rest, value) {
    this.i++;
    for (let k = 0; k < rest.length; k++) {
      if (this.i >= this.b.length) this.fail('EOF while parsing a value');
      const c = this.b[this.i++];
      if (c !== rest.charCodeAt(k)) this.fail('expected ident');
    }
    return value;
  }

  // Parses the string whose opening quote is at this.i.
  string() {
    const b = this.b;
    let i = ++this.i;
    let start = i;
    let out = '';
    let ascii = true;
    for (;;) {
      if (i >= b.length) {
        this.i = i;
        this.fail('EOF while parsing a string');
      }
      const c = b[i];
      if (c === 34) {
        out += this.slice(start, i, ascii);
        this.i = i + 1;
        return out;
      }
      if (c === 92) {
        out += this.slice(start, i, ascii);
        ascii = true;
        this.i = i + 1;
        out += this.escape();
        i = start = this.i;
        continue;
      }
      if (c < 0x20) {
        this.i = i + 1;
        this.fail('control character (\\u0000-\\u001F) found while parsing a string');
      }
      if (c >= 0x80) ascii = false;
      i++;
    }
  }

  slice(start, end, ascii) {
    if (start === end) return '';
    if (ascii && end - start < 64) {
      let s = '';
      for (let k = start; k < end; k++) s += String.fromCharCode(this.b[k]);
      return s;
    }
    try {
      return utf8Decoder.decode(this.b.subarray(start, end));
    } catch {
      this.i = end;
      this.fail('invalid unicode code point');
    }
  }

  escape() {
    if (this.i >= this.b.length) this.fail('EOF while parsing a string');
    const c = this.b[this.i++];
    switch (c) {
      case 34: return '"';
      case 92: return '\\';
      case 47: return '/';
      case 98: return '\b';
      case 102: return '\f';
      case 110: return '\n';
      case 114: return '\r';
      case 116: return '\t';
      case 117: {
        const hi = this.hex4();
        if (hi >= 0xdc00 && hi <= 0xdfff) this.fail('lone leading surrogate in hex escape');
        if (hi < 0xd800 || hi > 0xdbff) return String.fromCharCode(hi);
        for (const want of [92, 117]) {
          if (this.i >= this.b.length) this.fail('EOF while parsing a string');
          if (this.b[this.i++] !== want) this.fail('unexpected end of hex escape');
        }
        const lo = this.hex4();
        if (lo < 0xdc00 || lo > 0xdfff) this.fail('lone leading surrogate in hex escape');
        return String.fromCharCode(hi, lo);
      }
      default:
        this.fail('invalid escape');
    }
  }

  hex4() {
    if (this.i + 4 > this.b.length) {
      this.i = this.b.length;
      this.fail('EOF while parsing a string');
    }
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = this.b[this.i + k];
      let d;
      if (c >= 48 && c <= 57) d = c - 48;
      else if (c >= 97 && c <= 102) d = c - 87;
      else if (c >= 65 && c <= 70) d = c - 55;
      else d = -1;
      if (d < 0) {
        this.i += 4;
        this.fail('invalid escape');
      }
      v = v * 16 + d;
    }
    this.i += 4;
    return v;
  }

  // Skips a string (opening quote at this.i) without decoding it; like
  // serde's ignored strings, lone surrogates are accepted.
  skipString() {
    const b = this.b;
    this.i++;
    for (;;) {
      if (this.i >= b.length) this.fail('EOF while parsing a string');
      const c = b[this.i];
      if (c === 34) {
        this.i++;
        return;
      }
      if (c === 92) {
        this.i++;
        if (this.i >= b.length) this.fail('EOF while parsing a string');
        const e = b[this.i++];
        if (e === 117) this.hex4();
        else if (!(e === 34 || e === 92 || e === 47 || e === 98 || e === 102 || e === 110 || e === 114 || e === 116)) {
          this.fail('invalid escape');
        }
        continue;
      }
      if (c < 0x20) this.fail('control character (\\u0000-\\u001F) found while parsing a string');
      this.i++;
    }
  }

  // A number, as serde_json reads it (with `float_roundtrip`, as the Rust
  // SDK builds it: floats correctly rounded from all their digits):
  // { kind: 'u' | 'i' | 'f', value: number | bigint }.
  number() {
    const b = this.b;
    this.numStart = this.i;
    let positive = true;
    if (b[this.i] === 45) {
      positive = false;
      this.i++;
    }
    if (this.i >= b.length) this.fail('EOF while parsing a value');
    const first = b[this.i++];
    if (first < 48 || first > 57) this.fail('invalid number');
    let sig = first - 48; // a Number while below 2^53, a BigInt after
    let big = false;
    if (first === 48) {
      const c = b[this.i];
      if (c >= 48 && c <= 57) this.peekFail('invalid number');
    } else {
      for (;;) {
        const c = b[this.i];
        if (!(c >= 48 && c <= 57)) break;
        const d = c - 48;
        if (!big && sig * 10 + d >= TWO53) {
          sig = BigInt(sig);
          big = true;
        }
        if (big) {
          const next = sig * 10n + BigInt(d);
          if (next > U64_MAX) return { kind: 'f', value: this.longInteger(positive, sig) };
          sig = next;
        } else {
          sig = sig * 10 + d;
        }
        this.i++;
      }
    }
    const c = b[this.i];
    if (c === 46) return { kind: 'f', value: this.decimal(positive, sig, 0) };
    if (c === 101 || c === 69) return { kind: 'f', value: this.exponent(positive, sig, 0) };
    if (positive) return { kind: 'u', value: big && sig > BigInt(Number.MAX_SAFE_INTEGER) ? sig : Number(sig) };
    const neg = -BigInt(sig);
    if (sig === 0 || neg < -(2n ** 63n)) return { kind: 'f', value: -Number(sig) };
    return { kind: 'i', value: neg < -BigInt(Number.MAX_SAFE_INTEGER) ? neg : Number(neg) };
  }

  longInteger(positive, sig) {
    let exp = 0;
    for (;;) {
      const c = this.b[this.i];
      if (c >= 48 && c <= 57) {
        this.i++;
        exp++;
      } else if (c === 46) {
        return this.decimal(positive, sig, exp);
      } else if (c === 101 || c === 69) {
        return this.exponent(positive, sig, exp);
      } else {
        return this.fromParts();
      }
    }
  }

  decimal(positive, sig, expBefore) {
    const b = this.b;
    this.i++;
    let after = 0;
    let big = typeof sig === 'bigint';
    let overflow = false;
    for (;;) {
      const c = b[this.i];
      if (!(c >= 48 && c <= 57)) break;
      const d = c - 48;
      if (!big && sig * 10 + d >= TWO53) {
        sig = BigInt(sig);
        big = true;
      }
      if (big) {
        const next = sig * 10n + BigInt(d);
        if (next > U64_MAX) {
          overflow = true;
          break;
        }
        sig = next;
      } else {
        sig = sig * 10 + d;
      }
      this.i++;
      after--;
    }
    if (overflow) {
      while (b[this.i] >= 48 && b[this.i] <= 57) this.i++;
    } else if (after === 0) {
      if (this.i < b.length) this.peekFail('invalid number');
      this.peekFail('EOF while parsing a value');
    }
    const exp = expBefore + after;
    const c = b[this.i];
    if (c === 101 || c === 69) return this.exponent(positive, sig, exp);
    return this.fromParts();
  }

  exponent(positive, sig, start) {
    const b = this.b;
    this.i++;
    let positiveExp = true;
    if (b[this.i] === 43) this.i++;
    else if (b[this.i] === 45) {
      positiveExp = false;
      this.i++;
    }
    if (this.i >= b.length) this.fail('EOF while parsing a value');
    const first = b[this.i++];
    if (first < 48 || first > 57) this.fail('invalid number');
    let exp = first - 48;
    for (;;) {
      const c = b[this.i];
      if (!(c >= 48 && c <= 57)) break;
      this.i++;
      const next = exp * 10 + (c - 48);
      if (next > 2147483647) {
        const zero = sig == 0;
        if (!zero && positiveExp) this.fail('number out of range');
        while (b[this.i] >= 48 && b[this.i] <= 57) this.i++;
        return positive ? 0 : -0;
      }
      exp = next;
    }
    return this.fromParts();
  }

  // The float whose literal ends at this.i, correctly rounded (the
  // engine's string-to-number conversion is, like serde's).
  fromParts() {
    const f = Number(this.slice(this.numStart, this.i, true));
    if (!Number.isFinite(f)) this.fail('number out of range');
    return f;
  }

  // Any JSON value as plain JavaScript values (serde_json::Value rules).
  any() {
    const c = this.ws();
    switch (c) {
      case -1: this.peekFail('EOF while parsing a value'); break;
      case 110: return this.ident('ull', null);
      case 116: return this.ident('rue', true);
      case 102: return this.ident('alse', false);
      case 34: return this.string();
      case 91: {
        this.enter();
        const out = [];
        for (let more = this.firstElem(); more; more = this.nextElem()) out.push(this.any());
        this.endSeq();
        return out;
      }
      case 123: {
        this.enter();
        const out = {};
        for (let more = this.firstKey(); more; more = this.nextKey()) {
          const k = this.string();
          this.colon();
          const v = this.any();
          if (k === '__proto__') Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
          else out[k] = v;
        }
        this.endMap();
        return out;
      }
      default:
        if (c === 45 || (c >= 48 && c <= 57)) return this.number().value;
        this.peekFail('expected value');
    }
  }

  // Opens a container at this.i, with serde_json's nesting limit.
  enter() {
    if (++this.depth >= 128) this.peekFail('recursion limit exceeded');
    this.i++;
  }

  // Object entries: true when a key (at its opening quote) follows.
  firstKey() {
    const c = this.ws();
    if (c === 125) return false;
    if (c === 34) return true;
    if (c === -1) this.peekFail('EOF while parsing an object');
    this.peekFail('key must be a string');
  }
  nextKey() {
    let c = this.ws();
    if (c === 125) return false;
    if (c === 44) {
      this.i++;
      c = this.ws();
      if (c === 34) return true;
      if (c === 125) this.peekFail('trailing comma');
      if (c === -1) this.peekFail('EOF while parsing a value');
      this.peekFail('key must be a string');
    }
    if (c === -1) this.peekFail('EOF while parsing an object');
    this.peekFail('expected `,` or `}`');
  }
  endMap() {
    const c = this.ws();
    if (c === 125) {
      this.i++;
      this.depth--;
      return;
    }
    if (c === 44) this.peekFail('trailing comma');
    if (c === -1) this.peekFail('EOF while parsing an object');
    this.peekFail('trailing characters');
  }

  // Array elements: true when an element follows.
  firstElem() {
    const c = this.ws();
    if (c === -1) this.peekFail('EOF while parsing a list');
    return c !== 93;
  }
  nextElem() {
    let c = this.ws();
    if (c === 93) return false;
    if (c === 44) {
      this.i++;
      c = this.ws();
      if (c === 93) this.peekFail('trailing comma');
      if (c === -1) this.peekFail('EOF while parsing a value');
      return true;
    }
    if (c === -1) this.peekFail('EOF while parsing a list');
    this.peekFail('expected `,` or `]`');
  }
  endSeq() {
    const c = this.ws();
    if (c === 93) {
      this.i++;
      this.depth--;
      return;
    }
    if (c === 44) {
      this.i++;
      if (this.ws() === 93) this.peekFail('trailing comma');
      this.peekFail('trailing characters');
    }
    if (c === -1) this.peekFail('EOF while parsing a list');
    this.peekFail('trailing characters');
  }

  colon() {
    const c = this.ws();
    if (c === 58) {
      this.i++;
      return;
    }
    if (c === -1) this.peekFail('EOF while parsing an object');
    this.peekFail('expected `:`');
  }

  // Skips one value checking only its syntax, as serde's IgnoredAny does
  // (numbers are not range-checked; error texts differ slightly from `any`).
  skip() {
    const c = this.ws();
    if (c === 110) return this.ident('ull');
    if (c === 116) return this.ident('rue');
    if (c === 102) return this.ident('alse');
    if (c === 34) return this.skipString();
    if (c === 45 || (c >= 48 && c <= 57)) return this.skipNumber();
    if (c === -1) this.peekFail('EOF while parsing a value');
    if (c !== 91 && c !== 123) this.peekFail('expected value');
    this.i++;
    const close = c === 91 ? 93 : 125;
    let first = true;
    for (;;) {
      let d = this.ws();
      if (d === close) {
        this.i++;
        return;
      }
      if (!first) {
        if (d === -1) this.peekFail(c === 91 ? 'EOF while parsing a list' : 'EOF while parsing an object');
        if (d !== 44) this.peekFail(c === 91 ? 'expected `,` or `]`' : 'expected `,` or `}`');
        this.i++;
        d = this.ws();
      } else if (d === -1) {
        this.peekFail(c === 91 ? 'EOF while parsing a list' : 'EOF while parsing an object');
      }
      first = false;
      if (c === 123) {
        if (d === -1) this.peekFail('EOF while parsing an object');
        if (d !== 34) this.peekFail('key must be a string');
        this.skipString();
        this.colon();
      }
      this.skip();
    }
  }

  skipNumber() {
    const b = this.b;
    if (b[this.i] === 45) this.i++;
    const first = this.i < b.length ? b[this.i++] : 0;
    if (first === 48) {
      if (b[this.i] >= 48 && b[this.i] <= 57) this.peekFail('invalid number');
    } else if (first >= 49 && first <= 57) {
      while (b[this.i] >= 48 && b[this.i] <= 57) this.i++;
    } else {
      this.fail('invalid number');
    }
    if (b[this.i] === 46) {
      this.i++;
      if (!(b[this.i] >= 48 && b[this.i] <= 57)) this.peekFail('invalid number');
      while (b[this.i] >= 48 && b[this.i] <= 57) this.i++;
    }
    if (b[this.i] === 101 || b[this.i] === 69) {
      this.i++;
      if (b[this.i] === 43 || b[this.i] === 45) this.i++;
      const d = this.i < b.length ? b[this.i++] : 0;
      if (!(d >= 48 && d <= 57)) this.fail('invalid number');
      while (b[this.i] >= 48 && b[this.i] <= 57) this.i++;
    }
  }

  // Reads the value at this.i only to describe it in an "invalid type"
  // error, as serde_json does (scalars are consumed, containers are not).
  invalidType(shape) {
    const c = this.ws();
    let what;
    if (c === 110) this.ident('ull'), (what = 'null');
    else if (c === 116) this.ident('rue'), (what = 'boolean `true`');
    else if (c === 102) this.ident('alse'), (what = 'boolean `false`');
    else if (c === 34) what = 'string ' + rustDebugStr(this.string());
    else if (c === 91) what = 'sequence';
    else if (c === 123) what = 'map';
    else if (c === 45 || (c >= 48 && c <= 57)) what = describeNumber(this.number());
    else if (c === -1) this.peekFail('EOF while parsing a value');
    else this.peekFail('expected value');
    this.fail(`invalid type: ${what}, expected ${expecting(shape)}`);
  }

  // A value of the given shape, as serde would deserialize the Rust type.
  read(shape) {
    if (typeof shape === 'string') {
      const c = this.ws();
      if (shape.endsWith('?')) {
        if (c === 110) return this.ident('ull', null);
        return this.read(shape.slice(0, -1));
      }
      switch (shape) {
        case 'any': return this.any();
        case 'object':
          if (c !== 123) this.invalidType(shape);
          return this.any();
        case 'string':
          if (c !== 34) this.invalidType(shape);
          return this.string();
        case 'bool':
          if (c === 116) return this.ident('rue', true);
          if (c === 102) return this.ident('alse', false);
          this.invalidType(shape);
          break;
        case 'f64':
        case 'f32':
          if (c === 45 || (c >= 48 && c <= 57)) return Number(this.number().value);
          this.invalidType(shape);
          break;
        default: {
          const range = INT_RANGES[shape];
          if (!range) throw new Error(`unknown shape '${shape}'`);
          if (!(c === 45 || (c >= 48 && c <= 57))) this.invalidType(shape);
          const n = this.number();
          if (n.kind === 'f') this.fail(`invalid type: ${describeNumber(n)}, expected ${shape}`);
          const v = BigInt(n.value);
          if (v < range[0] || v > range[1]) this.fail(`invalid value: ${describeNumber(n)}, expected ${shape}`);
          return n.value;
        }
      }
    }
    if (Array.isArray(shape)) {
      if (this.ws() !== 91) this.invalidType(shape);
      this.enter();
      const out = [];
      for (let more = this.firstElem(); more; more = this.nextElem()) out.push(this.read(shape[0]));
      this.endSeq();
      return out;
    }
    const s = asStruct(shape);
    if (!s) throw new Error('unknown shape');
    const c = this.ws();
    if (c === 91 && s.name) return this.structFromSeq(s);
    if (c !== 123) this.invalidType(shape);
    this.enter();
    const out = {};
    const seen = new Set();
    let err = null;
    for (let more = this.firstKey(); more; more = this.nextKey()) {
      const k = this.string();
      const known = Object.prototype.hasOwnProperty.call(s.fields, k);
      if (known && seen.has(k)) {
        err = `duplicate field \`${k}\``;
        break;
      }
      if (!known && s.denyUnknown) {
        err = `unknown field \`${k}\`, ${oneOf(s.keys)}`;
        break;
      }
      this.colon();
      if (known) {
        seen.add(k);
        out[k] = this.read(s.fields[k]);
      } else {
        this.skip();
      }
    }
    if (err === null) {
      this.endMap();
      for (const k of s.keys) {
        if (seen.has(k)) continue;
        if (s.defaults && Object.prototype.hasOwnProperty.call(s.defaults, k)) {
          out[k] = s.defaults[k];
        } else if (typeof s.fields[k] === 'string' && s.fields[k].endsWith('?')) {
          out[k] = null;
        } else {
          err = `missing field \`${k}\``;
          break;
        }
      }
    } else if (this.ws() === 125) {
      this.i++;
    }
    if (err !== null) this.fail(err);
    const ordered = {};
    for (const k of s.keys) ordered[k] = out[k];
    return ordered;
  }

  // A struct written as an array of its fields in order (serde accepts it).
  structFromSeq(s) {
    this.enter();
    const out = {};
    let first = true;
    for (let n = 0; n < s.keys.length; n++) {
      const k = s.keys[n];
      if (!(first ? this.firstElem() : this.nextElem())) {
        if (s.defaults && Object.prototype.hasOwnProperty.call(s.defaults, k)) {
          out[k] = s.defaults[k];
          continue;
        }
        if (this.ws() === 93) this.i++;
        const m = s.keys.length;
        this.fail(`invalid length ${n}, expected struct ${s.name} with ${m} element${m === 1 ? '' : 's'}`);
      }
      first = false;
      out[k] = this.read(s.fields[k]);
    }
    if (!this.positions && this.ws() === 44) {
      // serde_json::Value (config) counts the whole array instead.
      let total = s.keys.length;
      while (this.nextElem()) {
        this.skip();
        total++;
      }
      this.fail(`invalid length ${total}, expected fewer elements in array`);
    }
    this.endSeq();
    return out;
  }
}

function oneOf(names) {
  if (names.length === 0) return 'there are no fields';
  if (names.length === 1) return `expected \`${names[0]}\``;
  if (names.length === 2) return `expected \`${names[0]}\` or \`${names[1]}\``;
  return 'expected one of ' + names.map((n) => `\`${n}\``).join(', ');
}

function describeNumber(n) {
  if (n.kind === 'f') return `floating point \`${formatFloat(n.value)}\``;
  return `integer \`${n.value}\``;
}

function toBytes(input) {
  return typeof input === 'string' ? utf8Encoder.encode(input) : input;
}

// The fast path: the engine's JSON.parse (native code, many times faster
// than a parser written in JavaScript inside the component) followed by a
// check of the tree against the shape, and of the text only where the tree
// cannot tell (an integer field must be written as an integer: serde
// refuses `5.0`, `5e0` or `-0` there). Numbers are read the same way by
// both (correctly rounded) except integers beyond 2^53 (exact BigInts for
// serde) and overflowing exponents (an error for serde, Infinity for
// JSON.parse): the check sends those, surrogate escapes, escaped field
// names (which could hide a duplicate) and deep nesting to the exact reader
// above, which also words every error like serde_json.
//
// No regular expression runs on the common path: in StarlingMonkey (an
// interpreter, no JIT) one costs several microseconds per short payload,
// more than the JSON.parse it guards.
const SURROGATE = /\\u[dD][89a-fA-F]/;
// Numbers that JSON.parse reads as integers but serde as floats (an integer
// shape inside an array: rare, checked on the whole text).
const FLOAT_INTEGRAL = /\.0+(?![0-9])|-0(?![.\d])/;
const NO = Symbol('no fast path');
// Deeper than this goes to the exact reader (serde_json's limit is 128).
const MAX_FAST_DEPTH = 100;

function fastParse(text, shape) {
  let v;
  try {
    v = JSON.parse(text);
  } catch {
    return NO;
  }
  const escapes = text.indexOf('\\u') >= 0;
  if (escapes && SURROGATE.test(text)) return NO;
  return check(v, shape, text, escapes, 0);
}

const INT_LIMITS = {};
for (const k of Object.keys(INT_RANGES)) INT_LIMITS[k] = [Number(INT_RANGES[k][0]), Number(INT_RANGES[k][1])];

function checkInt(v, shape) {
  const r = INT_LIMITS[shape];
  if (r === undefined || typeof v !== 'number' || v % 1 !== 0 || v < r[0] || v > r[1]
      || v > MAX_SAFE || v < -MAX_SAFE) return NO;
  return v;
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// Whether the exact reader gives the same as JSON.parse's `v` for 'any':
// every number finite and, when integral, within 2^53 (a float literal
// such as 1e17 is sent to the exact reader too, which is slower but gives
// the same), and not nested deeper than MAX_FAST_DEPTH.
function plain(v, depth) {
  switch (typeof v) {
    case 'number':
      // Integral: within 2^53; else finite (`% 1` is NaN for NaN and
      // infinities).
      return v % 1 === 0 ? v <= MAX_SAFE && v >= -MAX_SAFE : v - v === 0;
    case 'object': {
      if (v === null) return true;
      if (depth >= MAX_FAST_DEPTH) return false;
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) if (!plain(v[i], depth + 1)) return false;
        return true;
      }
      for (const k in v) if (!plain(v[k], depth + 1)) return false;
      return true;
    }
    default:
      return true;
  }
}

function isSpace(c) {
  return c === 32 || c === 10 || c === 13 || c === 9;
}

// Whether the value of the field whose quoted name is at `at` in `text` is
// written as the integer literal of `x` (not `5.0`, `5e0` or `-0`).
function intLiteralAt(text, at, q, x) {
  let p = at + q.length;
  while (isSpace(text.charCodeAt(p))) p++;
  if (text.charCodeAt(p) !== 58) return false; // ':'
  p++;
  while (isSpace(text.charCodeAt(p))) p++;
  const lit = '' + x;
  if (!text.startsWith(lit, p)) return false;
  const c = text.charCodeAt(p + lit.length);
  return !((c >= 48 && c <= 57) || c === 46 || c === 101 || c === 69);
}

// `v` as `shape`, or NO when it does not fit (the exact reader then says
// why) or when the exact reader could read it differently.
function check(v, shape, text, escapes, depth) {
  if (typeof shape === 'string') {
    switch (shape) {
      case 'any': return plain(v, depth) ? v : NO;
      case 'object': return isObject(v) && plain(v, depth) ? v : NO;
      case 'string': return typeof v === 'string' ? v : NO;
      case 'bool': return typeof v === 'boolean' ? v : NO;
      case 'f64':
      case 'f32': return typeof v === 'number' && v - v === 0 ? v : NO;
    }
    if (shape.endsWith('?')) return v === null ? null : check(v, shape.slice(0, -1), text, escapes, depth);
    if (checkInt(v, shape) === NO) return NO;
    // The whole text is the number: it must be its integer literal.
    if (depth === 0) return text === '' + v ? v : NO;
    // An integer in an array: only when no number could be a float that
    // looks integral.
    return FLOAT_INTEGRAL.test(text) ? NO : v;
  }
  if (depth >= MAX_FAST_DEPTH) return NO;
  if (Array.isArray(shape)) {
    if (!Array.isArray(v)) return NO;
    const out = new Array(v.length);
    for (let i = 0; i < v.length; i++) {
      const x = check(v[i], shape[0], text, escapes, depth + 1);
      if (x === NO) return NO;
      out[i] = x;
    }
    return out;
  }
  const s = asStruct(shape);
  if (!s) return NO;
  const fast = s.fastCheck();
  return fast !== null ? fast(v, text, escapes) : checkStruct(v, s, text, escapes, depth);
}

// A flat struct `s` checked field by field (see `check`).
function checkStruct(v, s, text, escapes, depth) {
  if (!s.flat || !isObject(v)) return NO;
  // A field given twice is an error for serde; an escaped name could hide it.
  if (escapes) return NO;
  const out = {};
  const { keys, quoted, kinds, fields } = s;
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i];
    const q = quoted[i];
    const at = text.indexOf(q);
    if (at >= 0 && text.indexOf(q, at + 1) >= 0) return NO;
    const x = v[k];
    if (x !== undefined || Object.prototype.hasOwnProperty.call(v, k)) {
      const kind = kinds[i];
      if (kind === K_FLOAT) {
        if (typeof x !== 'number' || x - x !== 0) return NO;
        out[k] = x;
        continue;
      }
      if (kind === K_STRING) {
        if (typeof x !== 'string') return NO;
        out[k] = x;
        continue;
      }
      const f = fields[k];
      const intShape = s.intShapes[i];
      if (intShape !== null && x !== null) {
        // `at` is the field's name: it is in the text once.
        if (checkInt(x, intShape) === NO || at < 0 || !intLiteralAt(text, at, q, x)) return NO;
        out[k] = x;
        continue;
      }
      const y = check(x, f, text, escapes, depth + 1);
      if (y === NO) return NO;
      out[k] = y;
    } else if (s.defaults && Object.prototype.hasOwnProperty.call(s.defaults, k)) {
      out[k] = s.defaults[k];
    } else if (fields[k].endsWith('?')) {
      out[k] = null;
    } else {
      return NO;
    }
  }
  if (s.denyUnknown) {
    for (const k in v) if (!Object.prototype.hasOwnProperty.call(fields, k)) return NO;
  }
  return out;
}

/**
 * Parses JSON text or UTF-8 bytes, as `shape` (default 'any'), with
 * serde_json's number parsing and error messages. Throws a JsonError.
 */
export function parseJson(input, shape = 'any') {
  let text = input;
  if (typeof input !== 'string') {
    try {
      text = utf8Decoder.decode(input);
    } catch {
      text = null;
    }
  }
  if (text !== null) {
    const v = fastParse(text, shape);
    if (v !== NO) return v;
  }
  const r = new Reader(toBytes(input), true);
  const v = r.read(shape);
  r.end();
  return v;
}

// ---------------------------------------------------------------------------
// Errors and logging

/** An error whose message is returned to the host as is. */
export class OperatorError extends Error {}

function reason(e) {
  if (typeof e === 'string') return e;
  if (e instanceof OperatorError || e instanceof JsonError) return e.message;
  if (e instanceof Error) return e.constructor === Error ? e.message : `${e.name}: ${e.message}`;
  return String(e);
}

/** Logging to the host's log, tagged with the operator and the current key. */
export const log = {
  trace: (msg) => hostLog('trace', String(msg)),
  debug: (msg) => hostLog('debug', String(msg)),
  info: (msg) => hostLog('info', String(msg)),
  warn: (msg) => hostLog('warn', String(msg)),
  error: (msg) => hostLog('error', String(msg)),
};

// ---------------------------------------------------------------------------
// Events and config

/** The event being handled. */
export class Event {
  /**
   * From the host's event record (`new Event(raw)`), or its parts
   * (`new Event(key, value, time)`). In a batch the payload is given as
   * its text (when it is UTF-8) and as a range of the batch's payload
   * bytes, which `value` views only when asked.
   */
  constructor(raw, value, time, text = null, src = null, start = 0, end = 0) {
    if (value === undefined) {
      value = raw.value;
      // componentize-js 0.23 hands s64 values over as unsigned (-5 arrives
      // as 2^64 - 5): reinterpret them as signed.
      time = raw.time == null ? null : BigInt.asIntN(64, BigInt(raw.time));
      raw = raw.key;
    }
    /** The routing key; state calls act on this key. */
    this.key = raw;
    /** Event time (BigInt) from the pipeline's time field, or null. */
    this.time = time;
    this._value = value;
    this._text = text;
    this._src = src;
    this._start = start;
    this._end = end;
  }

  /** The payload bytes (Uint8Array): the input line or the previous emit. */
  get value() {
    let v = this._value;
    if (v === null) v = this._value = this._src.subarray(this._start, this._end);
    return v;
  }
  set value(v) {
    this._value = v;
    this._text = null;
  }

  /** The payload parsed as `shape` (default: any JSON). Errors name the problem. */
  json(shape = 'any') {
    try {
      return parseJson(this._text ?? this.value, shape);
    } catch (e) {
      if (e instanceof JsonError) throw new OperatorError(`payload is not the expected JSON: ${e.message}`);
      throw e;
    }
  }

  /** The payload parsed as `shape`, throwing the bare JsonError on failure. */
  parse(shape = 'any') {
    return parseJson(this._text ?? this.value, shape);
  }

  /** The payload as text. */
  text() {
    if (this._text !== null) return this._text;
    try {
      return utf8Decoder.decode(this.value);
    } catch {
      throw new OperatorError('payload is not UTF-8');
    }
  }
}

/** The operator's `config` table from the pipeline file. */
export class Config {
  constructor(text) {
    this.text = text.trim() === '' ? '{}' : text;
    try {
      /** The whole config as plain JavaScript values. */
      this.json = parseJson(this.text);
    } catch (e) {
      throw new OperatorError(`config is not JSON: ${e.message}`);
    }
  }

  /** One field as `shape`: null when missing or null; an error naming the field when mistyped. */
  get(field, shape = 'any') {
    const j = this.json;
    if (j === null || typeof j !== 'object' || Array.isArray(j)) return null;
    if (!Object.prototype.hasOwnProperty.call(j, field) || j[field] === null) return null;
    // Re-read the field from the text so numbers keep their integer/float kind.
    const r = new Reader(utf8Encoder.encode(this.text), false);
    try {
      return r.read({ [field]: shape })[field];
    } catch (e) {
      if (e instanceof JsonError) throw new OperatorError(`config field \`${field}\`: ${e.message}`);
      throw e;
    }
  }

  /** The whole config as `shape` (use `struct(..., { default })` for optional fields). */
  parse(shape) {
    const r = new Reader(utf8Encoder.encode(this.text), false);
    try {
      return r.read(shape);
    } catch (e) {
      if (e instanceof JsonError) throw new OperatorError(`invalid config: ${e.message}`);
      throw e;
    }
  }
}

// ---------------------------------------------------------------------------
// Internal: for eddy.js and eddy-window.js (not re-exported to operators)

export { encode, encodeText, reason, toBytes, utf8Decoder, utf8Encoder, write };
