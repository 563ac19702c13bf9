//! The host's decoder of what a component returns from `handle-batch`
//! (`eddy_codec::CheckedResult`) never panics or reads out of bounds: a
//! result is refused with an error, or accepted and then read whole, and an
//! accepted result is exactly what the codec's builder makes of what was
//! read (so nothing in it goes unread or is read two ways).
//!
//! Inputs are results built from arbitrary outcomes and then changed
//! (numbers, bytes, lengths), so that the fuzzer explores results near the
//! valid ones, or columns of arbitrary numbers and bytes.
#![no_main]

use eddy_codec::wit::{BatchResult, Strings};
use eddy_codec::{CheckedResult, Handled, Limits, ResultBuilder};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok((result, events, limits)) = input(&mut u) {
        decode(&result, events, &limits);
    }
});

/// A result, the number of events of its batch, and the limits.
fn input(u: &mut Unstructured<'_>) -> Result<(BatchResult, usize, Limits)> {
    let mut result = match u.ratio(3, 4)? {
        true => built(u)?,
        false => arbitrary_columns(u)?,
    };
    let changes = u.int_in_range(0..=4)?;
    for _ in 0..changes {
        change(u, &mut result)?;
    }
    let handled = result.emit_counts.len();
    let events = match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=handled + 2)?,
        _ => handled + result.stop as usize + u.int_in_range(0..=1)? * result.stop as usize,
    };
    let limit = |u: &mut Unstructured<'_>| -> Result<usize> {
        Ok(match u.ratio(1, 4)? {
            true => u.int_in_range(0..=8)?,
            false => usize::MAX,
        })
    };
    let limits = Limits {
        max_name: limit(u)?,
        max_value: limit(u)?,
        max_emit_key: limit(u)?,
        max_emit: limit(u)?,
    };
    Ok((result, events, limits))
}

fn bytes<'a>(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
    let n = u.int_in_range(0..=6)?;
    u.bytes(n)
}

/// A result the guest-side builder makes of arbitrary outcomes.
fn built(u: &mut Unstructured<'_>) -> Result<BatchResult> {
    let mut b = ResultBuilder::new();
    let events = u.int_in_range(0..=8)?;
    for _ in 0..events {
        for _ in 0..u.int_in_range(0..=3)? {
            let key = String::from_utf8_lossy(bytes(u)?).into_owned();
            b.emit(&key, bytes(u)?);
        }
        for _ in 0..u.int_in_range(0..=3)? {
            let name = String::from_utf8_lossy(bytes(u)?).into_owned();
            let value = match u.ratio(1, 4)? {
                true => None,
                false => Some(bytes(u)?),
            };
            b.write(name.as_bytes(), value);
        }
        match u.int_in_range(0..=5)? {
            0 => b.failed(&String::from_utf8_lossy(bytes(u)?)),
            1 => {
                b.stop();
                break;
            }
            _ => b.ok(),
        }
    }
    Ok(b.finish())
}

fn column(u: &mut Unstructured<'_>) -> Result<Strings> {
    let n = u.int_in_range(0..=16)?;
    let bytes = u.bytes(n)?.to_vec();
    let ends = numbers(u, 20)?;
    Ok(Strings { bytes, ends })
}

fn numbers(u: &mut Unstructured<'_>, max: u32) -> Result<Vec<u32>> {
    let n = u.int_in_range(0..=6)?;
    (0..n).map(|_| number(u, max)).collect()
}

fn number(u: &mut Unstructured<'_>, max: u32) -> Result<u32> {
    match u.ratio(1, 8)? {
        true => u.arbitrary(),
        false => u.int_in_range(0..=max),
    }
}

/// Columns of arbitrary numbers and bytes.
fn arbitrary_columns(u: &mut Unstructured<'_>) -> Result<BatchResult> {
    Ok(BatchResult {
        emit_counts: numbers(u, 3)?,
        write_counts: numbers(u, 3)?,
        emit_keys: column(u)?,
        emit_payloads: column(u)?,
        write_names: column(u)?,
        write_values: column(u)?,
        deletes: numbers(u, 6)?,
        failed: numbers(u, 6)?,
        reasons: column(u)?,
        stop: u.arbitrary()?,
    })
}

/// Changes one number, byte or length of `r`.
fn change(u: &mut Unstructured<'_>, r: &mut BatchResult) -> Result<()> {
    let which = u.int_in_range(0..=13)?;
    if which == 13 {
        r.stop = !r.stop;
        return Ok(());
    }
    let numbers = match which {
        0 => Some(&mut r.emit_counts),
        1 => Some(&mut r.write_counts),
        2 => Some(&mut r.emit_keys.ends),
        3 => Some(&mut r.emit_payloads.ends),
        4 => Some(&mut r.write_names.ends),
        5 => Some(&mut r.write_values.ends),
        6 => Some(&mut r.deletes),
        7 => Some(&mut r.failed),
        8 => Some(&mut r.reasons.ends),
        _ => None,
    };
    let value = number(u, 24)?;
    let how = u.int_in_range(0..=2)?;
    match numbers {
        Some(v) => edit(u, v, value, how),
        None => {
            let v = match which {
                9 => &mut r.emit_keys.bytes,
                10 => &mut r.emit_payloads.bytes,
                11 => &mut r.write_names.bytes,
                _ => &mut r.write_values.bytes,
            };
            edit(u, v, value as u8, how)
        }
    }
}

/// Sets an entry of `v` to `value`, appends it, or removes the last.
fn edit<T>(u: &mut Unstructured<'_>, v: &mut Vec<T>, value: T, how: u8) -> Result<()> {
    match how {
        0 if !v.is_empty() => {
            let i = u.choose_index(v.len())?;
            v[i] = value;
        }
        1 => v.push(value),
        _ => {
            v.pop();
        }
    }
    Ok(())
}

/// An outcome read from a checked result.
#[derive(Debug, PartialEq)]
enum Outcome<'a> {
    Ok {
        emits: Vec<(&'a str, &'a [u8])>,
        writes: Vec<(&'a str, Option<&'a [u8]>)>,
    },
    Failed(&'a str),
    Stop,
}

fn read<'a>(c: CheckedResult<'a>) -> Vec<Outcome<'a>> {
    c.iter()
        .map(|h| match h {
            Handled::Ok { emits, writes } => Outcome::Ok {
                emits: emits.collect(),
                writes: writes.collect(),
            },
            Handled::Failed { reason } => Outcome::Failed(reason),
            Handled::Stop => Outcome::Stop,
        })
        .collect()
}

fn decode(r: &BatchResult, events: usize, limits: &Limits) {
    let first = CheckedResult::new(r, events, limits);
    let second = CheckedResult::new(r, events, limits);
    let (first, second) = match (first, second) {
        (Ok(a), Ok(b)) => (read(a), read(b)),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "the same error twice");
            // The message names what is wrong.
            assert!(!a.to_string().is_empty());
            return;
        }
        (a, b) => panic!("two answers: {a:?} and {b:?}"),
    };
    assert_eq!(first, second);
    // One outcome per event, or fewer ending with a stop.
    match first.last() {
        Some(Outcome::Stop) => assert!(first.len() <= events),
        _ => assert_eq!(first.len(), events),
    }
    // Within the limits; the rebuilt result is the one given.
    let mut b = ResultBuilder::new();
    for o in &first {
        match o {
            Outcome::Ok { emits, writes } => {
                for (k, p) in emits {
                    assert!(k.len() <= limits.max_emit_key && p.len() <= limits.max_emit);
                    b.emit(k, p);
                }
                for (n, v) in writes {
                    assert!(n.len() <= limits.max_name);
                    assert!(v.map_or(0, <[u8]>::len) <= limits.max_value);
                    b.write(n.as_bytes(), *v);
                }
                b.ok();
            }
            Outcome::Failed(reason) => b.failed(reason),
            Outcome::Stop => b.stop(),
        }
    }
    assert_eq!(&b.finish(), r, "an accepted result is what its outcomes build");
}
