//! Builders: the host builds a [`Batch`], the guest builds a
//! [`BatchResult`]. Both append to buffers they keep, so building costs no
//! allocation per event once the buffers have grown.

use thiserror::Error;

use crate::wit::{offset, Batch, BatchResult, Strings};

/// Bytes a `strings` entry, a `u32` and an `s64` take in the guest's memory
/// once lowered (canonical ABI sizes), for [`BatchBuilder::size`].
const END: usize = 4;
const U32: usize = 4;
const S64: usize = 8;

/// Why a [`BatchBuilder`] refused to add a key or an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    /// The batch would take more than its cap in the guest's memory; it
    /// is left as it was before the call.
    #[error("the batch would take {size} bytes, over its cap of {cap} bytes")]
    Full {
        /// What the batch would take with the addition.
        size: usize,
        /// [`BatchBuilder::set_cap`].
        cap: usize,
    },
    /// An event names a key index the batch does not have.
    #[error("event key index {key}, but the batch has {keys} keys")]
    NoSuchKey {
        /// The index given.
        key: u32,
        /// Keys in the batch.
        keys: usize,
    },
}

/// Builds the [`Batch`] the host hands `handle-batch`, in buffers kept from
/// batch to batch ([`BatchBuilder::clear`] keeps their capacity).
///
/// ```
/// use eddy_codec::BatchBuilder;
/// let mut b = BatchBuilder::new();
/// let k = b.key("user-1", [("count", &b"41"[..])]).unwrap();
/// b.event(k, Some(7), br#"{"amount":3}"#).unwrap();
/// assert_eq!(b.batch().event_keys, [0]);
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    batch: Batch,
    /// Most bytes the batch may take in the guest's memory ([`Self::size`]).
    cap: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty builder, capped at `u32::MAX` bytes (offsets are `u32`).
    pub fn new() -> BatchBuilder {
        BatchBuilder {
            batch: Batch::default(),
            cap: u32::MAX as usize,
        }
    }

    /// Caps what the batch may take in the guest's memory, in bytes (at
    /// most `u32::MAX`): an addition that would pass it is refused.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.min(u32::MAX as usize);
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        let b = &mut self.batch;
        b.keys.clear();
        b.value_counts.clear();
        b.value_names.clear();
        b.value_bytes.clear();
        b.event_keys.clear();
        b.payloads.clear();
        b.timed.clear();
        b.times.clear();
    }

    /// What the batch takes in the guest's memory once lowered: its bytes
    /// and its numbers.
    pub fn size(&self) -> usize {
        let b = &self.batch;
        let strings = |s: &Strings| s.bytes.len() + s.ends.len() * END;
        strings(&b.keys)
            + b.value_counts.len() * U32
            + strings(&b.value_names)
            + strings(&b.value_bytes)
            + b.event_keys.len() * U32
            + strings(&b.payloads)
            + b.timed.len() * U32
            + b.times.len() * S64
    }

    /// Adds a key with its single values (name, bytes); returns its index
    /// for [`BatchBuilder::event`]. Each key must be added once per batch.
    pub fn key<'v>(
        &mut self,
        key: &str,
        values: impl IntoIterator<Item = (&'v str, &'v [u8])>,
    ) -> Result<u32, BuildError> {
        let b = &mut self.batch;
        let nvalues = b.value_names.len();
        b.keys.push(key.as_bytes());
        for (name, bytes) in values {
            b.value_names.push(name.as_bytes());
            b.value_bytes.push(bytes);
        }
        b.value_counts.push(offset(b.value_names.len() - nvalues));
        let size = self.size();
        if size > self.cap {
            let b = &mut self.batch;
            b.keys.truncate(b.keys.len() - 1);
            b.value_counts.pop();
            b.value_names.truncate(nvalues);
            b.value_bytes.truncate(nvalues);
            return Err(BuildError::Full {
                size,
                cap: self.cap,
            });
        }
        Ok(offset(self.batch.keys.len() - 1))
    }

    /// Adds an event of the key at index `key` (from [`BatchBuilder::key`]).
    pub fn event(&mut self, key: u32, time: Option<i64>, payload: &[u8]) -> Result<(), BuildError> {
        let keys = self.batch.keys.len();
        if key as usize >= keys {
            return Err(BuildError::NoSuchKey { key, keys });
        }
        let timed = time.map_or(0, |_| U32 + S64);
        let size = self.size() + U32 + payload.len() + END + timed;
        if size > self.cap {
            return Err(BuildError::Full {
                size,
                cap: self.cap,
            });
        }
        let b = &mut self.batch;
        if let Some(time) = time {
            b.timed.push(offset(b.event_keys.len()));
            b.times.push(time);
        }
        b.event_keys.push(key);
        b.payloads.push(payload);
        Ok(())
    }

    /// Number of keys added.
    pub fn key_count(&self) -> usize {
        self.batch.keys.len()
    }

    /// Number of events added.
    pub fn event_count(&self) -> usize {
        self.batch.event_keys.len()
    }

    /// The batch built so far.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }
}

/// Builds the [`BatchResult`] a guest returns from `handle-batch`.
///
/// For each event, in order: add its emits ([`ResultBuilder::emit`]) as the
/// operator makes them and its writes ([`ResultBuilder::write`]), then end
/// it with [`ResultBuilder::ok`] or [`ResultBuilder::failed`] (which drops
/// the event's emits and writes); or end the result there with
/// [`ResultBuilder::stop`] (likewise). [`ResultBuilder::finish`] hands the
/// result over; [`ResultBuilder::begin`] starts the next one with room for
/// as much, so a guest allocates its buffers once per batch, not per event.
///
/// ```
/// use eddy_codec::ResultBuilder;
/// let mut r = ResultBuilder::new();
/// r.emit("user-1", br#"{"count":42}"#);
/// r.write(b"count", Some(b"42"));
/// r.ok();
/// r.failed("payload is not JSON");
/// let result = r.finish();
/// assert_eq!(result.emit_counts, [1, 0]);
/// assert_eq!(result.failed, [1]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ResultBuilder {
    result: BatchResult,
    /// Emits and writes of the events ended so far (the current event's
    /// follow, dropped if it fails or stops).
    emits_at: usize,
    writes_at: usize,
    deletes_at: usize,
    /// Sizes of the last result's buffers: the next reserves as much.
    last: [usize; 9],
}

impl ResultBuilder {
    /// An empty result.
    pub fn new() -> ResultBuilder {
        ResultBuilder::default()
    }

    /// Adds an emit of the current event.
    pub fn emit(&mut self, key: &str, payload: &[u8]) {
        let r = &mut self.result;
        r.emit_keys.push(key.as_bytes());
        r.emit_payloads.push(payload);
    }

    /// Adds an emit of the current event whose payload `write` appends to
    /// the buffer it is given (e.g. a serializer writing straight into the
    /// result). When `write` fails, nothing is added and its error returned.
    pub fn emit_with<E>(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let r = &mut self.result;
        r.emit_payloads.push_with(write)?;
        r.emit_keys.push(key.as_bytes());
        Ok(())
    }

    /// Adds a write of the current event: `name` (UTF-8 bytes) set to
    /// `value`, or deleted for `None`.
    pub fn write(&mut self, name: &[u8], value: Option<&[u8]>) {
        let r = &mut self.result;
        if value.is_none() {
            r.deletes.push(offset(r.write_names.len()));
        }
        r.write_names.push(name);
        r.write_values.push(value.unwrap_or_default());
    }

    /// Emits added for the current event so far.
    pub fn pending_emits(&self) -> usize {
        self.result.emit_keys.len() - self.emits_at
    }

    /// Events ended so far.
    pub fn handled(&self) -> usize {
        self.result.emit_counts.len()
    }

    /// Ends the current event as handled, with the emits and writes added
    /// since the previous one ended.
    pub fn ok(&mut self) {
        let r = &mut self.result;
        r.emit_counts
            .push(offset(r.emit_keys.len() - self.emits_at));
        r.write_counts
            .push(offset(r.write_names.len() - self.writes_at));
        self.mark();
    }

    /// Ends the current event as failed with `reason`, dropping its emits
    /// and writes.
    pub fn failed(&mut self, reason: &str) {
        self.discard();
        let r = &mut self.result;
        r.failed.push(offset(r.emit_counts.len()));
        r.reasons.push(reason.as_bytes());
        r.emit_counts.push(0);
        r.write_counts.push(0);
        self.mark();
    }

    /// Ends the result before the current event, which needs the per-event
    /// path: its emits and writes are dropped. Add nothing after it.
    pub fn stop(&mut self) {
        self.discard();
        self.result.stop = true;
    }

    /// Drops what was added for the current event.
    fn discard(&mut self) {
        let r = &mut self.result;
        r.emit_keys.truncate(self.emits_at);
        r.emit_payloads.truncate(self.emits_at);
        r.write_names.truncate(self.writes_at);
        r.write_values.truncate(self.writes_at);
        r.deletes.truncate(self.deletes_at);
    }

    /// The current event's emits and writes start after what is there.
    fn mark(&mut self) {
        let r = &self.result;
        self.emits_at = r.emit_keys.len();
        self.writes_at = r.write_names.len();
        self.deletes_at = r.deletes.len();
    }

    /// Starts a result: reserves room for as much as the last one held, so
    /// that its buffers grow once per batch at most.
    pub fn begin(&mut self) {
        self.discard();
        let l = self.last;
        let r = &mut self.result;
        r.emit_counts.reserve(l[0]);
        r.write_counts.reserve(l[0]);
        r.emit_keys.bytes.reserve(l[1]);
        r.emit_keys.ends.reserve(l[2]);
        r.emit_payloads.bytes.reserve(l[3]);
        r.emit_payloads.ends.reserve(l[2]);
        r.write_names.bytes.reserve(l[4]);
        r.write_names.ends.reserve(l[5]);
        r.write_values.bytes.reserve(l[6]);
        r.write_values.ends.reserve(l[5]);
        r.deletes.reserve(l[7]);
        r.failed.reserve(l[8]);
        r.reasons.ends.reserve(l[8]);
    }

    /// The result built (an event not yet ended is dropped); the builder is
    /// then empty.
    pub fn finish(&mut self) -> BatchResult {
        self.discard();
        let r = std::mem::take(&mut self.result);
        self.last = [
            r.emit_counts.len(),
            r.emit_keys.bytes.len(),
            r.emit_keys.len(),
            r.emit_payloads.bytes.len(),
            r.write_names.bytes.len(),
            r.write_names.len(),
            r.write_values.bytes.len(),
            r.deletes.len(),
            r.failed.len(),
        ];
        (self.emits_at, self.writes_at, self.deletes_at) = (0, 0, 0);
        r
    }
}
