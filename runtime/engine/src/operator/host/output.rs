//! `eddy:operator/output` (`wit/output.wit`): what an event emits.

use compact_str::CompactString;

use crate::operator::wasm::bindings::eddy::operator::output;

use super::{trap, HostError, OpCtx};

/// What an operator emitted while handling one event, in order: keys
/// inline (short ones need no allocation), payloads in one buffer, both
/// reused from event to event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Emits {
    /// Key and payload range in `data`, per emitted event (`usize`: no
    /// size of `data` can wrap them).
    items: Vec<(CompactString, usize, usize)>,
    data: Vec<u8>,
    /// Bytes of the emitted keys.
    key_bytes: usize,
}

impl Emits {
    /// Adds an event emitted with `key` and payload `value`.
    pub fn push(&mut self, key: &str, value: &[u8]) {
        self.push_key(CompactString::from(key), value)
    }

    pub(super) fn push_key(&mut self, key: CompactString, value: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(value);
        self.key_bytes += key.len();
        self.items.push((key, at, self.data.len()));
    }

    /// Bytes of every key and payload.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.key_bytes
    }

    /// Number of emitted events.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The emitted events: key and payload, in emit order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.items
            .iter()
            .map(|(k, a, b)| (k.as_str(), &self.data[*a..*b]))
    }

    /// Forgets every event (keeps the buffers).
    pub fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
        self.key_bytes = 0;
    }

    /// Moves the events of `other` after these.
    pub fn append(&mut self, other: &mut Emits) {
        if self.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        for (k, v) in other.iter() {
            self.push(k, v);
        }
        other.clear();
    }
}

impl OpCtx {
    /// `output.emit`: emits `value` under `key` (refused outside an event, in a migration, or over a limit).
    pub fn emit(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        let i = self.current()?;
        if self.migrating {
            return Err(HostError::EmitInMigrate);
        }
        self.check_emit(value.len())?;
        self.check_key(key.as_bytes())?;
        let total = self.emits.bytes() + key.len() + value.len();
        if total > self.limits.max_emit_per_event {
            return Err(HostError::EventEmitsTooLarge {
                size: total,
                limit: self.limits.max_emit_per_event,
            });
        }
        self.check_held(self.slots[i].size, key.len() + value.len())?;
        self.emits.push(key, value);
        Ok(())
    }
}

impl output::Host for OpCtx {
    fn emit(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        OpCtx::emit(self, &key, &value).map_err(trap)
    }
}
