//! Reading a few keys' committed state for people and tools (`eddy state`):
//! one key, or the keys after a prefix, without loading the rest.

use super::*;

/// Keys with their stored records, in key order.
pub type KeyRecords = Vec<(String, Vec<u8>)>;

impl Store {
    /// The committed record of `(operator, key)`, its checksum verified.
    pub fn record(&self, operator: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader()?.get(operator, key)
    }

    /// Up to `limit` committed `(key, record)` pairs of `operator` whose key
    /// starts with `prefix`, in key order, each checksum verified; and
    /// whether more follow.
    pub fn scan_prefix(
        &self,
        operator: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<(KeyRecords, bool), StoreError> {
        self.reader()?.scan_prefix(operator, prefix, limit)
    }
}

impl Reader {
    /// [`Store::scan_prefix`] as this reader sees the state (so that the
    /// items of spilled lists are read from the same checkpoint).
    pub fn scan_prefix(
        &self,
        operator: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<(KeyRecords, bool), StoreError> {
        let dir = &self.dir;
        let (out, more) = guard(dir, || {
            let mut out = Vec::new();
            let mut more = false;
            for item in self
                .table
                .range((operator, prefix)..)
                .map_err(|e| db_err(dir, e))?
            {
                let (k, v) = item.map_err(|e| db_err(dir, e))?;
                let (op, key) = k.value();
                if op != operator || !key.starts_with(prefix) {
                    break;
                }
                if out.len() == limit {
                    more = true;
                    break;
                }
                out.push((key.to_string(), v.value().to_vec()));
            }
            Ok((out, more))
        })?;
        for (key, record) in &out {
            crate::state::check_record(record).map_err(|e| StoreError::CorruptState {
                dir: dir.to_path_buf(),
                operator: operator.to_string(),
                key: key.clone(),
                reason: e.0.to_string(),
            })?;
        }
        Ok((out, more))
    }
}
