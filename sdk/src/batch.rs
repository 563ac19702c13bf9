//! The batched fast path (`handle-batch` in `wit/world.wit`): the host sends
//! many events with the single values of their keys in one frame; the SDK
//! runs the operator on each, serving `Value` reads and buffering writes and
//! emits here, and returns them in one frame. No host call per event.
//!
//! An operator that uses maps, lists or `clear_key` during a batch makes the
//! SDK stop the batch at that event (status 2): the host then handles it and
//! the rest with the per-event `handle`, where those calls go to the host.

use std::cell::RefCell;

use crate::bindings::eddy::operator::{output, state};

/// Bytes of a state value or name: a range of the input frame (as the host
/// sent it, never copied) or written during the batch.
enum Bytes {
    Frame(u32, u32),
    Owned(Vec<u8>),
}

impl Bytes {
    fn get<'a>(&'a self, frame: &'a [u8]) -> &'a [u8] {
        match self {
            Bytes::Frame(a, b) => &frame[*a as usize..*b as usize],
            Bytes::Owned(v) => v,
        }
    }
}

/// One single value of a key: its name and bytes (`None`: deleted in this
/// batch).
struct Entry {
    name: Bytes,
    value: Option<Bytes>,
}

/// The state of a running batch.
struct Batch {
    /// The input frame; `Bytes::Frame` ranges point into it.
    frame: Vec<u8>,
    /// Per key index: its single values.
    keys: Vec<Vec<Entry>>,
    /// Key index of the event being handled.
    current: usize,
    /// Undo journal of the current event: (value slot, old value, added).
    undo: Vec<(usize, Option<Bytes>, bool)>,
    /// Value slots of the current key written by the current event (their
    /// final values are its writes).
    touched: Vec<usize>,
    /// Emits of the current event, framed as in the result.
    emits: Vec<u8>,
    /// Number of emits in `emits`.
    emit_count: u32,
    /// The current event used state the batch does not carry.
    stop: bool,
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Whether a batch is running (state calls are served here).
pub(crate) fn active() -> bool {
    BATCH.with(|b| b.borrow().is_some())
}

/// Marks the current event as needing the per-event path.
pub(crate) fn stop() {
    BATCH.with(|b| {
        if let Some(b) = b.borrow_mut().as_mut() {
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
    BATCH.with(|b| match b.borrow().as_ref() {
        Some(b) => f(b.keys[b.current]
            .iter()
            .find(|e| e.name.get(&b.frame) == name.as_bytes())
            .and_then(|e| e.value.as_ref())
            .map(|v| v.get(&b.frame))),
        None => f(state::get(name).as_deref()),
    })
}

fn write(name: &str, value: Option<Vec<u8>>) -> bool {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let Some(b) = b.as_mut() else { return false };
        let cur = b.current;
        let frame = &b.frame;
        let values = &mut b.keys[cur];
        let value = value.map(Bytes::Owned);
        let (slot, existed) = match values
            .iter()
            .position(|e| e.name.get(frame) == name.as_bytes())
        {
            Some(i) => {
                let old = std::mem::replace(&mut values[i].value, value);
                let existed = old.is_some();
                b.undo.push((i, old, false));
                (i, existed)
            }
            None => {
                values.push(Entry {
                    name: Bytes::Owned(name.as_bytes().to_vec()),
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
    })
}

/// Sets the current key's value `name` to `value` (already encoded).
pub(crate) fn set_owned(name: &str, value: Vec<u8>) {
    if !active() {
        return state::set(name, &value);
    }
    write(name, Some(value));
}

pub(crate) fn delete(name: &str) -> bool {
    if !active() {
        return state::delete(name);
    }
    write(name, None)
}

/// In a batch, serializes `value` as JSON straight into the emit buffer and
/// returns `true`; outside one, returns `false`.
pub(crate) fn emit_json<T: serde::Serialize + ?Sized>(
    key: &str,
    value: &T,
) -> Result<bool, crate::Error> {
    BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(b) => {
            put(&mut b.emits, key.as_bytes());
            let at = b.emits.len();
            b.emits.extend_from_slice(&[0; 4]);
            serde_json::to_writer(&mut b.emits, value)
                .map_err(|e| crate::Error::msg(format!("cannot encode emitted value: {e}")))?;
            let len = (b.emits.len() - at - 4) as u32;
            b.emits[at..at + 4].copy_from_slice(&len.to_le_bytes());
            b.emit_count += 1;
            Ok(true)
        }
        None => Ok(false),
    })
}

pub(crate) fn emit(key: &str, value: &[u8]) {
    let buffered = BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(b) => {
            put(&mut b.emits, key.as_bytes());
            put(&mut b.emits, value);
            b.emit_count += 1;
            true
        }
        None => false,
    });
    if !buffered {
        output::emit(key, value)
    }
}

/// Reads the input frame.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("batch frame is truncated".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize)
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()?;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| "batch frame holds a non-UTF-8 string".into())
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Runs `handle` on every event of the frame; returns the result frame.
pub(crate) fn run(
    frame: Vec<u8>,
    mut handle: impl FnMut(crate::Event) -> Result<(), crate::Error>,
) -> Vec<u8> {
    let mut r = Reader(&frame);
    // Where a slice of the frame lies in it.
    let base = frame.as_ptr() as usize;
    let range = |s: &[u8]| {
        let a = (s.as_ptr() as usize - base) as u32;
        (a, a + s.len() as u32)
    };
    let parsed = (|| -> Result<_, String> {
        let nkeys = r.u32()?;
        let mut keys = Vec::with_capacity(nkeys);
        let mut values = Vec::with_capacity(nkeys);
        for _ in 0..nkeys {
            let k = r.str()?;
            keys.push(range(k.as_bytes()));
            let n = r.u32()?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let (n0, n1) = range(r.str()?.as_bytes());
                let (v0, v1) = range(r.bytes()?);
                v.push(Entry {
                    name: Bytes::Frame(n0, n1),
                    value: Some(Bytes::Frame(v0, v1)),
                });
            }
            values.push(v);
        }
        Ok((keys, values))
    })();
    // A malformed frame is a host bug: trap, so the host replays per event.
    let (keys, values) = parsed.unwrap_or_else(|e| panic!("{e}"));
    let nevents = r.u32().unwrap_or_else(|e| panic!("{e}"));
    let mut pos = frame.len() - r.0.len();
    let mut out = Vec::with_capacity(frame.len());
    BATCH.with(|b| {
        *b.borrow_mut() = Some(Batch {
            frame,
            keys: values,
            current: 0,
            undo: Vec::new(),
            touched: Vec::new(),
            emits: Vec::new(),
            emit_count: 0,
            stop: false,
        })
    });
    for _ in 0..nevents {
        let event = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            let b = b.as_mut().unwrap();
            let mut r = Reader(&b.frame[pos..]);
            let (k, time, value) = (|| -> Result<_, String> {
                let k = r.u32()?;
                let time = if r.u8()? == 1 { Some(r.i64()?) } else { None };
                Ok((k, time, r.bytes()?))
            })()
            .unwrap_or_else(|e| panic!("{e}"));
            let &(k0, k1) = keys
                .get(k)
                .unwrap_or_else(|| panic!("batch frame: key index {k} out of range"));
            // Keys were checked to be UTF-8 when the frame was read.
            let key = String::from_utf8(b.frame[k0 as usize..k1 as usize].to_vec())
                .expect("checked above");
            let value = value.to_vec();
            pos = b.frame.len() - r.0.len();
            b.current = k;
            crate::Event { key, value, time }
        });
        let result = handle(event);
        let stopped = BATCH.with(|b| {
            let mut b = b.borrow_mut();
            let b = b.as_mut().unwrap();
            let ok = result.is_ok() && !b.stop;
            if !ok {
                // Undo this event's writes to the batch's view of the key.
                let cur = b.current;
                while let Some((i, old, added)) = b.undo.pop() {
                    if added {
                        b.keys[cur].remove(i);
                    } else {
                        b.keys[cur][i].value = old;
                    }
                }
            }
            b.undo.clear();
            if b.stop {
                out.push(2);
                return true;
            }
            match &result {
                Ok(()) => {
                    out.push(0);
                    out.extend_from_slice(&(b.touched.len() as u32).to_le_bytes());
                    let values = &b.keys[b.current];
                    for &i in &b.touched {
                        let e = &values[i];
                        match &e.value {
                            Some(v) => {
                                out.push(0);
                                put(&mut out, e.name.get(&b.frame));
                                put(&mut out, v.get(&b.frame));
                            }
                            None => {
                                out.push(1);
                                put(&mut out, e.name.get(&b.frame));
                            }
                        }
                    }
                    out.extend_from_slice(&b.emit_count.to_le_bytes());
                    out.extend_from_slice(&b.emits);
                }
                Err(e) => {
                    out.push(1);
                    put(&mut out, e.message().as_bytes());
                }
            }
            b.touched.clear();
            b.emits.clear();
            b.emit_count = 0;
            false
        });
        if stopped {
            break;
        }
    }
    BATCH.with(|b| *b.borrow_mut() = None);
    out
}
