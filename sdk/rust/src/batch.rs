//! The batched fast path (`handle-batch` in `wit/world.wit`): the host sends
//! many events with the single values of their keys in one frame; the SDK
//! runs the operator on each, serving `Value` reads and buffering writes and
//! emits here, and returns them in one frame. No host call per event.
//!
//! An operator that uses maps, lists or `clear_key` during a batch makes the
//! SDK stop the batch at that event (status 2): the host then handles it and
//! the rest with the per-event `handle`, where those calls go to the host.
//!
//! Nothing is allocated per event: events borrow the input frame, values
//! written during the batch go to one arena, emits are written straight
//! into the result frame, and the buffers are kept from batch to batch.

use std::cell::RefCell;
use std::rc::Rc;

use smallvec::SmallVec;

use crate::bindings::eddy::operator::{output, state};

/// Bytes of a state value or name: a range of the input frame (as the host
/// sent it, never copied) or of the batch's arena (written in the batch).
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
    /// The input frame; `Bytes::Frame` ranges point into it.
    frame: Rc<Vec<u8>>,
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
    /// The result frame; the current event's entry starts at `entry`.
    out: Vec<u8>,
    entry: usize,
    /// Number of emits of the current event.
    emit_count: u32,
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
        let (frame, arena) = (&b.frame[..], &b.arena[..]);
        f(b.keys[b.current]
            .iter()
            .find(|e| e.name.get(frame, arena) == name.as_bytes())
            .and_then(|e| e.value)
            .map(|v| v.get(frame, arena)))
    })
}

/// Records a write of the current key's value `name` in the batch; `false`
/// when no batch is running.
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
        let (frame, arena) = (&b.frame[..], &b.arena);
        let values = &mut b.keys[b.current];
        let (slot, existed) = match values
            .iter()
            .position(|e| e.name.get(frame, arena) == name.as_bytes())
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
        Some(existed)
    })
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

/// In a batch, serializes `value` as JSON straight into the result frame
/// and returns `true`; outside one, returns `false`.
pub(crate) fn emit_json<T: serde::Serialize + ?Sized>(
    key: &str,
    value: &T,
) -> Result<bool, crate::Error> {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return Ok(false);
        }
        let mark = b.out.len();
        put(&mut b.out, key.as_bytes());
        let at = b.out.len();
        b.out.extend_from_slice(&[0; 4]);
        if let Err(e) = serde_json::to_writer(&mut b.out, value) {
            b.out.truncate(mark);
            return Err(crate::Error::msg(format!(
                "cannot encode emitted value: {e}"
            )));
        }
        let len = len32(b.out.len() - at - 4);
        b.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        b.emit_count += 1;
        Ok(true)
    })
}

pub(crate) fn emit(key: &str, value: &[u8]) {
    let buffered = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        if !b.active {
            return false;
        }
        put(&mut b.out, key.as_bytes());
        put(&mut b.out, value);
        b.emit_count += 1;
        true
    });
    if !buffered {
        output::emit(key, value)
    }
}

/// Reads the input frame. A malformed frame is a host bug: the SDK traps,
/// and the host replays the batch per event.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        if self.0.len() < n {
            panic!("batch frame is truncated");
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        h
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> usize {
        u32::from_le_bytes(self.take(4).try_into().unwrap()) as usize
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn bytes(&mut self) -> &'a [u8] {
        let n = self.u32();
        self.take(n)
    }
}

/// A key of the frame as text. Keys are mostly ASCII, checked a word at a
/// time; others go through the full UTF-8 check.
fn key_str(b: &[u8]) -> &str {
    if b.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return unsafe { std::str::from_utf8_unchecked(b) };
    }
    std::str::from_utf8(b).unwrap_or_else(|_| panic!("batch frame holds a non-UTF-8 key"))
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&len32(b.len()).to_le_bytes());
    out.extend_from_slice(b);
}

/// A length or offset in a frame, arena or result, as the frame's `u32`.
/// On wasm32 every buffer is under 4 GiB, so it always fits; were it not
/// to, the SDK traps (the host then replays the batch event by event)
/// rather than write a wrapped length.
#[inline]
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("batch frame: {n} bytes do not fit a u32 length"))
}

/// Runs `handle` on every event of the frame; returns the result frame.
pub(crate) fn run(
    frame: Vec<u8>,
    mut handle: impl FnMut(crate::Event<'_>) -> Result<(), crate::Error>,
) -> Vec<u8> {
    let frame = Rc::new(frame);
    let mut r = Reader(&frame);
    // Where a slice of the frame lies in it.
    let base = frame.as_ptr() as usize;
    let range = |s: &[u8]| {
        let a = len32(s.as_ptr() as usize - base);
        (a, len32(s.as_ptr() as usize - base + s.len()))
    };
    let nkeys = r.u32();
    let mut keys: Vec<&str> = Vec::with_capacity(nkeys);
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let b = &mut *b;
        b.active = true;
        b.frame = frame.clone();
        b.arena.clear();
        b.out = Vec::with_capacity(frame.len());
        if b.keys.len() < nkeys {
            b.keys.resize_with(nkeys, Values::new);
        }
        for values in &mut b.keys[..nkeys] {
            let k = key_str(r.bytes());
            keys.push(k);
            values.clear();
            for _ in 0..r.u32() {
                let (n0, n1) = range(r.bytes());
                let (v0, v1) = range(r.bytes());
                values.push(Entry {
                    name: Bytes::Frame(n0, n1),
                    value: Some(Bytes::Frame(v0, v1)),
                });
            }
        }
    });
    let nevents = r.u32();
    for _ in 0..nevents {
        let k = r.u32();
        let time = if r.u8() == 1 { Some(r.i64()) } else { None };
        let value = r.bytes();
        let key = *keys
            .get(k)
            .unwrap_or_else(|| panic!("batch frame: key index {k} out of range"));
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.current = k;
            // The entry: status and emit count, patched when it ends.
            b.entry = b.out.len();
            b.out.extend_from_slice(&[0; 5]);
        });
        let result = handle(crate::Event { key, value, time });
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
                b.out.truncate(b.entry);
            }
            b.undo.clear();
            let emits = std::mem::take(&mut b.emit_count);
            let touched = std::mem::take(&mut b.touched);
            if b.stop {
                b.out.push(2);
                return true;
            }
            match &result {
                Ok(()) => {
                    let at = b.entry + 1;
                    b.out[at..at + 4].copy_from_slice(&emits.to_le_bytes());
                    b.out.extend_from_slice(&len32(touched.len()).to_le_bytes());
                    let (frame, arena) = (&b.frame[..], &b.arena[..]);
                    let values = &b.keys[b.current];
                    for &i in &touched {
                        let e = &values[i];
                        match e.value {
                            Some(v) => {
                                b.out.push(0);
                                put(&mut b.out, e.name.get(frame, arena));
                                put(&mut b.out, v.get(frame, arena));
                            }
                            None => {
                                b.out.push(1);
                                put(&mut b.out, e.name.get(frame, arena));
                            }
                        }
                    }
                }
                Err(e) => {
                    b.out.push(1);
                    put(&mut b.out, e.message().as_bytes());
                }
            }
            b.touched = touched;
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
        std::mem::take(&mut b.out)
    })
}
