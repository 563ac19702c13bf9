//! The batched fast path (`handle-batch` in `wit/world.wit`): the host sends
//! many events with the single values of their keys in one typed batch
//! (`wit/batch.wit`); the SDK runs the operator on each, serving `Value`
//! reads and buffering writes and emits here, and returns them in one
//! result, built with `eddy_codec::ResultBuilder`. No host call per event.
//!
//! An operator that uses maps, lists or `clear_key` during a batch makes the
//! SDK stop the batch at that event (outcome `stop`): the host then handles
//! it and the rest with the per-event `handle`, where those calls go to the
//! host.
//!
//! Nothing is allocated per event: events borrow the batch's data, values
//! written during the batch go to one arena, emits are written straight
//! into the result's data, and the buffers are kept from batch to batch
//! (the result's, which the canonical ABI takes over, are sized like the
//! last one's).

use std::cell::RefCell;
use std::rc::Rc;

use eddy_codec::wit::{Batch as WitBatch, BatchResult};
use eddy_codec::{BatchView, ResultBuilder};
use smallvec::SmallVec;

use crate::bindings::eddy::operator::{log, output, state};

/// Bytes of a state value or name: a range of the batch's `value-names` or
/// `value-bytes` column (as the host sent it, never copied) or of the
/// batch's arena (written in the batch).
#[derive(Clone, Copy)]
enum Bytes {
    Frame(u32, u32),
    Arena(u32, u32),
}

impl Bytes {
    #[inline]
    fn get<'a>(self, frame: &'a [u8], arena: &'a [u8]) -> &'a [u8] {
        match self {
            Bytes::Frame(a, b) => &frame[a as usize..b as usize],
            Bytes::Arena(a, b) => &arena[a as usize..b as usize],
        }
    }
}

/// One single value of a key: its name and bytes (`None`: deleted in this
/// batch).
#[derive(Clone, Copy)]
struct Entry {
    name: Bytes,
    value: Option<Bytes>,
}

/// A key's single values (operators keep a handful: inline).
type Values = SmallVec<[Entry; 2]>;

/// The state of the running batch; kept between batches so its buffers are
/// reused.
#[derive(Default)]
struct Batch {
    /// A batch is running.
    active: bool,
    /// The batch; `Bytes::Frame` ranges of names point into its
    /// `value_names`, of values into its `value_bytes` (checked by
    /// `BatchView` to lie there).
    frame: Rc<WitBatch>,
    /// Names and values written during the batch.
    arena: Vec<u8>,
    /// Per key index: its single values (the first `nkeys` are in use).
    keys: Vec<Values>,
    /// Key index of the event being handled.
    current: usize,
    /// Undo journal of the current event: (value slot, old value, added).
    undo: Vec<(usize, Option<Bytes>, bool)>,
    /// Value slots of the current key written by the current event (their
    /// final values are its writes).
    touched: SmallVec<[usize; 4]>,
    /// The result: emits go straight into it.
    out: ResultBuilder,
    /// The current event used state the batch does not carry.
    stop: bool,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Whether a batch is running (state calls are served here).
pub(crate) fn active() -> bool {
    BATCH.with(|b| b.borrow().active)
}

/// Marks the current event as needing the per-event path.
pub(crate) fn stop() {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if b.active {
            b.stop = true;
        }
    })
}

/// The error returned by map/list calls in a batch (the event is then
/// redone on the per-event path, so the operator never sees it take effect).
pub(crate) fn stop_error() -> crate::Error {
    stop();
    crate::Error::msg("map and list state are served on the per-event path")
}

/// Calls `f` with the current key's value `name` (no copy in a batch).
pub(crate) fn with_value<R>(name: &str, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
    BATCH.with(|b| {
        let b = b.borrow();
        if !b.active {
            drop(b);
            return f(state::get(name).as_deref());
        }
        let (names, values) = (
            &b.frame.value_names.bytes[..],
            &b.frame.value_bytes.bytes[..],
        );
        let arena = &b.arena[..];
        f(b.keys[b.current]
            .iter()
            .find(|e| same(e.name.get(names, arena), name.as_bytes()))
            .and_then(|e| e.value)
            .map(|v| v.get(values, arena)))
    })
}

/// Records a write of the current key's value `name` in the batch; `None`
/// when no batch is running, else whether the value existed.
fn write(name: &str, value: Option<&[u8]>) -> Option<bool> {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return None;
        }
        let b = &mut *b;
        let value = value.map(|v| {
            let at = len32(b.arena.len());
            b.arena.extend_from_slice(v);
            Bytes::Arena(at, len32(b.arena.len()))
        });
        Some(record(b, name, value))
    })
}

/// In a batch, encodes the current key's value `name` with `encode` straight
/// into the batch's arena (no buffer of its own, no copy) and records the
/// write; `None` when no batch is running. When `encode` fails, nothing is
/// written.
pub(crate) fn set_with<E>(
    name: &str,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Option<Result<(), E>> {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return None;
        }
        let b = &mut *b;
        let at = b.arena.len();
        if let Err(e) = encode(&mut b.arena) {
            b.arena.truncate(at);
            return Some(Err(e));
        }
        let value = Bytes::Arena(len32(at), len32(b.arena.len()));
        record(b, name, Some(value));
        Some(Ok(()))
    })
}

/// Records that the current event set the current key's value `name` to
/// `value` (bytes already in the batch; `None`: deleted); returns whether
/// the value existed.
fn record(b: &mut Batch, name: &str, value: Option<Bytes>) -> bool {
    let (names, arena) = (&b.frame.value_names.bytes[..], &b.arena);
    let values = &mut b.keys[b.current];
    let (slot, existed) = match values
        .iter()
        .position(|e| same(e.name.get(names, arena), name.as_bytes()))
    {
        Some(i) => {
            let old = std::mem::replace(&mut values[i].value, value);
            b.undo.push((i, old, false));
            (i, old.is_some())
        }
        None => {
            let at = len32(b.arena.len());
            b.arena.extend_from_slice(name.as_bytes());
            values.push(Entry {
                name: Bytes::Arena(at, len32(b.arena.len())),
                value,
            });
            b.undo.push((values.len() - 1, None, true));
            (values.len() - 1, false)
        }
    };
    if !b.touched.contains(&slot) {
        b.touched.push(slot);
    }
    existed
}

/// Sets the current key's value `name` to `value` (already encoded).
pub(crate) fn set(name: &str, value: &[u8]) {
    if write(name, Some(value)).is_none() {
        state::set(name, value)
    }
}

pub(crate) fn delete(name: &str) -> bool {
    match write(name, None) {
        Some(existed) => existed,
        None => state::delete(name),
    }
}

/// In a batch, serializes `value` as JSON straight into the result and
/// returns `true`; outside one, returns `false`.
pub(crate) fn emit_json<T: serde::Serialize + ?Sized>(
    key: &str,
    value: &T,
) -> Result<bool, crate::Error> {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return Ok(false);
        }
        b.out
            .emit_with(key, |buf| crate::json::to_writer(buf, value))
            .map_err(|e| crate::Error::msg(format!("cannot encode emitted value: {e}")))?;
        Ok(true)
    })
}

pub(crate) fn emit(key: &str, value: &[u8]) {
    let buffered = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return false;
        }
        b.out.emit(key, value);
        true
    });
    if !buffered {
        output::emit(key, value)
    }
}

/// Whether two state names are equal. Names are short (a handful of
/// bytes), and on wasm32 `==` on slices calls `memcmp`, a byte loop in
/// wasi-libc that recent compilers no longer expand inline: compared here
/// eight bytes at a time, with no call.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    a8.iter()
        .zip(b8)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_rest.iter().zip(b_rest).all(|(x, y)| x == y)
}

/// An offset in the arena, as a `u32`. On wasm32 every buffer is under
/// 4 GiB, so it always fits; were it not to, the SDK traps (the host then
/// replays the batch event by event) rather than write a wrapped offset.
#[inline]
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("batch arena: {n} bytes do not fit a u32 offset"))
}

/// Runs `handle` on every event of `batch`; returns the result.
///
/// A batch the codec refuses (a host bug) is answered with `stop` at its
/// first event, after logging why: the host then handles it per event.
pub(crate) fn run(
    batch: WitBatch,
    mut handle: impl FnMut(crate::Event<'_>) -> Result<(), crate::Error>,
) -> BatchResult {
    let frame = Rc::new(batch);
    let view = match BatchView::new(&frame) {
        Ok(view) => view,
        Err(e) => {
            log::log(
                log::Level::Error,
                &format!("the host sent a malformed batch ({e}); handling it per event"),
            );
            let mut out = ResultBuilder::new();
            out.stop();
            return out.finish();
        }
    };
    let mut keys: Vec<&str> = Vec::with_capacity(view.key_count());
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let b = &mut *b;
        b.active = true;
        b.frame = frame.clone();
        b.arena.clear();
        b.out.begin();
        if b.keys.len() < view.key_count() {
            b.keys.resize_with(view.key_count(), Values::new);
        }
        let batch = view.batch();
        // Checked by `BatchView`: the strings lie in their columns, whose
        // offsets are `u32`.
        let range = |s: &eddy_codec::wit::Strings, i| {
            let r = s.range(i).unwrap_or_default();
            Bytes::Frame(r.start as u32, r.end as u32)
        };
        for (key, values) in view.keys().zip(&mut b.keys) {
            keys.push(key.key);
            values.clear();
            values.extend(key.values.map(|i| Entry {
                name: range(&batch.value_names, i),
                value: Some(range(&batch.value_bytes, i)),
            }));
        }
    });
    for event in view.events() {
        let k = event.key as usize;
        BATCH.with(|b| b.borrow_mut().current = k);
        let result = handle(crate::Event {
            key: keys[k],
            value: event.payload,
            time: event.time,
        });
        let stopped = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            let b = &mut *b;
            let ok = result.is_ok() && !b.stop;
            if !ok {
                // Undo this event's writes to the batch's view of the key.
                let values = &mut b.keys[b.current];
                while let Some((i, old, added)) = b.undo.pop() {
                    if added {
                        values.remove(i);
                    } else {
                        values[i].value = old;
                    }
                }
            }
            b.undo.clear();
            if b.stop {
                b.touched.clear();
                b.out.stop();
                return true;
            }
            match &result {
                Ok(()) => {
                    let names = &b.frame.value_names.bytes[..];
                    let (values, arena) = (&b.frame.value_bytes.bytes[..], &b.arena[..]);
                    let entries = &b.keys[b.current];
                    for &i in &b.touched {
                        let e = &entries[i];
                        b.out.write(
                            e.name.get(names, arena),
                            e.value.map(|v| v.get(values, arena)),
                        );
                    }
                    b.out.ok();
                }
                Err(e) => b.out.failed(e.message()),
            }
            b.touched.clear();
            false
        });
        if stopped {
            break;
        }
    }
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.active = false;
        b.stop = false;
        b.frame = Rc::default();
        b.out.finish()
    })
}
