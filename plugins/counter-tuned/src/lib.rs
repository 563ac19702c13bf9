//! The keyed counter of `plugins/counter`, tuned by hand: the same state,
//! outputs and refusals, so either can replace the other in a running
//! pipeline. `eddy bench` runs both: this one shows what hand tuning still
//! buys over the operator written the way the README teaches.
//!
//! Emits `{"count": <events so far>, "sum": <sum so far>}` keyed like the
//! input. An event without `amount` counts with 0; one whose `amount` is not
//! a number, or that is not a JSON object, is refused with serde's reason.

use eddy_sdk::{emit_raw, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// The key's totals, one state value so each event costs one read and one
/// write.
const TOTALS: Value<Totals> = Value::new("totals");

struct Counter {
    /// The encoded totals, reused from event to event.
    json: Vec<u8>,
}

#[derive(Serialize, Deserialize, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

/// An input event as `plugins/counter` reads it: what the fast path falls
/// back to, so results and errors are the same.
#[derive(Deserialize)]
struct Purchase {
    #[serde(default)]
    amount: f64,
}

impl Operator for Counter {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Counter {
            json: Vec::with_capacity(64),
        })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let amount = match fast::amount(event.value) {
            Some(v) => v,
            None => purchase(&event)?,
        };
        let mut t = match TOTALS.with_json(fast::totals) {
            Some(Some(t)) => t,
            None => Totals::default(),
            // Not in the usual shape: the full decoder.
            Some(None) => stored_totals()?,
        };
        t.count += 1;
        t.sum += amount;
        // One encoding for both the state and the emitted event.
        fast::encode(&t, &mut self.json);
        emit_raw(event.key, &self.json);
        TOTALS.set_json(&self.json);
        Ok(())
    }
}

eddy_sdk::export_operator!(Counter);

/// The key's totals through serde_json (the record is not in the shape the
/// fast path reads). Kept out of line, as the other slow paths: the hot
/// path stays small, which helps the compiled Wasm.
#[cold]
#[inline(never)]
fn stored_totals() -> Result<Totals, Error> {
    Ok(TOTALS.get()?.unwrap_or_default())
}

/// The event's amount through serde (the payload is not in the shape the
/// fast path reads): the value, or the error, `plugins/counter` gives.
#[cold]
#[inline(never)]
fn purchase(event: &Event) -> Result<f64, Error> {
    Ok(event.json::<Purchase>()?.amount)
}

/// Fast paths for the common shapes: a flat JSON object of plain strings
/// and numbers, and the totals record as this operator writes it. Each
/// returns `None` for anything else, and the caller then uses serde_json, so
/// results (and errors) are exactly serde_json's.
mod fast {
    use super::Totals;

    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    /// A plain string at `b[i] == '"'` (ASCII, no escapes, no control
    /// characters): its contents and the index after it.
    fn string(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len = b[start..].iter().position(|&c| c == b'"')?;
        let s = &b[start..start + len];
        if s.iter().any(|&c| c < 0x20 || c == b'\\' || c >= 0x80) {
            return None;
        }
        Some((s, start + len + 1))
    }

    /// A JSON number token at `i`: its text, whether it is an integer,
    /// and the index after it.
    fn number(b: &[u8], mut i: usize) -> Option<(&[u8], bool, usize)> {
        let start = i;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > s
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else if !digits(&mut i) {
            return None;
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            i += 1;
            integer = false;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            integer = false;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        Some((&b[start..i], integer, i))
    }

    /// Digits as an unsigned integer; `None` past 18 digits.
    fn digits_u64(d: &[u8]) -> Option<u64> {
        if d.is_empty() || d.len() > 18 {
            return None;
        }
        Some(d.iter().fold(0, |n, &c| n * 10 + (c - b'0') as u64))
    }

    /// A number as serde_json reads it into `f64` (integers through
    /// `u64`/`i64`, others correctly rounded); `None` for the edge cases.
    fn to_f64(text: &[u8], integer: bool) -> Option<f64> {
        let (negative, body) = match text.strip_prefix(b"-") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        // One pass: the digits as an integer `m`, and where the dot is.
        let mut m = 0u64;
        let mut digits = 0;
        let mut dot = None;
        for (j, &c) in body.iter().enumerate() {
            if c.is_ascii_digit() {
                m = m.wrapping_mul(10).wrapping_add((c - b'0') as u64);
                digits += 1;
            } else if c == b'.' {
                dot = Some(j);
            } else {
                digits = usize::MAX; // an exponent: the full parser
                break;
            }
        }
        if integer && digits <= 18 {
            if negative && m == 0 {
                return None; // "-0": serde_json's own rules
            }
            let n = m as f64;
            return Some(if negative { -n } else { n });
        }
        // A plain decimal `int.frac` of at most 15 significant digits is
        // m / 10^k with m and 10^k exact in f64, so one division is
        // correctly rounded (Clinger's fast path): the value the full
        // parser gives.
        if let (Some(dot), true) = (dot, digits <= 15) {
            let v = m as f64 / POW10[body.len() - dot - 1];
            return Some(if negative { -v } else { v });
        }
        if integer {
            return None;
        }
        // serde_json refuses numbers out of range.
        std::str::from_utf8(text)
            .ok()?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    }

    /// Powers of ten exact in `f64`.
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];

    /// `amount` of a flat JSON object of plain strings, numbers, booleans
    /// and nulls (0 when missing); `None` for anything else, including an
    /// `amount` that is not a number or appears twice (serde refuses both).
    pub fn amount(b: &[u8]) -> Option<f64> {
        let mut i = ws(b, 0);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i = ws(b, i + 1);
        let mut found = None;
        if b.get(i) == Some(&b'}') {
            return Some(0.0);
        }
        loop {
            let (name, next) = string(b, i)?;
            let ours = name == b"amount";
            i = ws(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            match b.get(i)? {
                b'-' | b'0'..=b'9' => {
                    let (text, integer, next) = number(b, i)?;
                    i = next;
                    if ours {
                        if found.is_some() {
                            return None;
                        }
                        found = Some(to_f64(text, integer)?);
                    }
                }
                _ if ours => return None,
                b'"' => i = string(b, i)?.1,
                b't' if b[i..].starts_with(b"true") => i += 4,
                b'f' if b[i..].starts_with(b"false") => i += 5,
                b'n' if b[i..].starts_with(b"null") => i += 4,
                _ => return None,
            }
            i = ws(b, i);
            match b.get(i)? {
                b',' => i = ws(b, i + 1),
                b'}' => return Some(found.unwrap_or(0.0)),
                _ => return None,
            }
        }
    }

    /// The totals record exactly as [`encode`] writes it.
    pub fn totals(b: &[u8]) -> Option<Totals> {
        let rest = b.strip_prefix(b"{\"count\":")?;
        let (count, integer, i) = number(rest, 0)?;
        if !integer || count.starts_with(b"-") {
            return None;
        }
        let count = digits_u64(count)?;
        let rest = rest[i..].strip_prefix(b",\"sum\":")?;
        let (sum, integer, i) = number(rest, 0)?;
        if &rest[i..] != b"}" {
            return None;
        }
        let sum = to_f64(sum, integer)?;
        Some(Totals { count, sum })
    }

    fn write_u64(out: &mut Vec<u8>, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }

    #[cold]
    #[inline(never)]
    fn write_f64(out: &mut Vec<u8>, v: f64) {
        serde_json::to_writer(out, &v).expect("writing to a Vec");
    }

    /// The totals as JSON, byte for byte what serde_json writes, into `out`
    /// (cleared first).
    pub fn encode(t: &Totals, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"{\"count\":");
        write_u64(out, t.count);
        out.extend_from_slice(b",\"sum\":");
        // A whole number below 10^15 is written `123.0` by serde_json;
        // anything else goes through it.
        if t.sum.fract() == 0.0 && t.sum.abs() < 1e15 && t.sum != 0.0 {
            if t.sum < 0.0 {
                out.push(b'-');
            }
            write_u64(out, t.sum.abs() as u64);
            out.extend_from_slice(b".0");
        } else {
            write_f64(out, t.sum);
        }
        out.push(b'}');
    }
}
