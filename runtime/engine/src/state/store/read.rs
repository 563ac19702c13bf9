//! Reading committed state: readers for workers, scans and samples.

use redb::{ReadableDatabase, TableHandle};

use super::*;

impl Store {
    /// Up to `n` keys of `operator` with committed state, in key order.
    pub fn sample_keys(&self, operator: &str, n: usize) -> Result<Vec<String>, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
            let mut out = Vec::new();
            for item in table.range((operator, "")..).map_err(|e| db_err(dir, e))? {
                let (k, _) = item.map_err(|e| db_err(dir, e))?;
                let (op, key) = k.value();
                if op != operator || out.len() >= n {
                    break;
                }
                out.push(key.to_string());
            }
            Ok(out)
        })
    }

    /// A reader of committed state, for loading keys on first touch.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
            let items = match txn.open_table(LIST_ITEMS) {
                Ok(t) => Some(t),
                // No list was ever spilled (or a state directory from
                // before spilled lists).
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(dir, e)),
            };
            let fields = match txn.open_table(MAP_FIELDS) {
                Ok(t) => Some(t),
                // No map was ever spilled.
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(dir, e)),
            };
            Ok(Reader {
                table,
                items,
                fields,
                dir: self.dir.clone(),
            })
        })
    }

    /// Every stored `(key, record)` of `operator`, in key order (for tests
    /// and tools); each record's checksum is verified.
    pub fn scan(&self, operator: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = &self.dir;
        let out: Vec<(String, Vec<u8>)> = guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
            let mut out = Vec::new();
            for item in table.range((operator, "")..).map_err(|e| db_err(dir, e))? {
                let (k, v) = item.map_err(|e| db_err(dir, e))?;
                let (op, key) = k.value();
                if op != operator {
                    break;
                }
                out.push((key.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        for (key, record) in &out {
            check_record(dir, operator, key, record)?;
        }
        Ok(out)
    }
}

/// Verifies the checksum of a stored record (see
/// [`crate::state::check_record`]).
pub(super) fn check_record(
    dir: &Path,
    operator: &str,
    key: &str,
    record: &[u8],
) -> Result<(), StoreError> {
    crate::state::check_record(record).map_err(|e| StoreError::CorruptState {
        dir: dir.to_path_buf(),
        operator: operator.to_string(),
        key: key.to_string(),
        reason: e.0.to_string(),
    })
}

/// The rows of spilled list items, as a [`Reader`] holds them.
type ItemsTable =
    redb::ReadOnlyTable<(&'static str, &'static str, &'static str, u64), &'static [u8]>;

/// The rows of spilled map fields, as a [`Reader`] holds them.
type FieldsTable =
    redb::ReadOnlyTable<(&'static str, &'static str, &'static str, &'static str), &'static [u8]>;

/// A snapshot of committed state. Workers hold one and renew it at each
/// checkpoint; what they wrote since is in their cache, so a snapshot that
/// is older than the cache is never consulted for those keys.
pub struct Reader {
    pub(super) table: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    /// The items of spilled lists, from the same transaction.
    items: Option<ItemsTable>,
    /// The fields of spilled maps, from the same transaction.
    fields: Option<FieldsTable>,
    pub(super) dir: PathBuf,
}

impl Reader {
    /// The stored record of `(operator, key)`, its checksum verified.
    pub fn get(&self, operator: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = &self.dir;
        let record = guard(dir, || {
            let v = self
                .table
                .get((operator, key))
                .map_err(|e| db_err(dir, e))?;
            Ok(v.map(|v| v.value().to_vec()))
        })?;
        if let Some(r) = &record {
            check_record(dir, operator, key, r)?;
        }
        Ok(record)
    }

    /// Calls `f` with the items `from..to` (absolute indexes) of spilled
    /// list `name` of `(operator, key)`, in order, each checksum verified.
    /// Every one of them must be stored: a missing row is corrupt state.
    pub fn list_items(
        &self,
        operator: &str,
        key: &str,
        name: &str,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let dir = &self.dir;
        let corrupt = |reason: String| StoreError::CorruptState {
            dir: dir.to_path_buf(),
            operator: operator.to_string(),
            key: key.to_string(),
            reason: format!("list `{name}`: {reason}"),
        };
        let mut next = from;
        guard(dir, || {
            let Some(items) = &self.items else {
                return Ok(());
            };
            let range = (operator, key, name, from)..(operator, key, name, to);
            for item in items.range(range).map_err(|e| db_err(dir, e))? {
                let (k, v) = item.map_err(|e| db_err(dir, e))?;
                let index = k.value().3;
                if index != next {
                    break;
                }
                f(item_of(index, v.value()).map_err(|r| corrupt(format!("item {index}: {r}")))?);
                next += 1;
            }
            Ok(())
        })?;
        if next != to {
            return Err(corrupt(format!(
                "item {next} is missing (items {from}..{to} were read)"
            )));
        }
        Ok(())
    }
}

impl Reader {
    /// Calls `f` with the value of field `field` of spilled map `name` of
    /// `(operator, key)`, its checksum verified; whether it is stored.
    pub fn map_field(
        &self,
        operator: &str,
        key: &str,
        name: &str,
        field: &str,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let Some(fields) = &self.fields else {
                return Ok(false);
            };
            match fields
                .get((operator, key, name, field))
                .map_err(|e| db_err(dir, e))?
            {
                None => Ok(false),
                Some(v) => {
                    f(
                        value_of(field, v.value()).map_err(|r| StoreError::CorruptState {
                            dir: dir.to_path_buf(),
                            operator: operator.to_string(),
                            key: key.to_string(),
                            reason: format!("map `{name}`: field {field:?}: {r}"),
                        })?,
                    );
                    Ok(true)
                }
            }
        })
    }

    /// Calls `f` with the fields of spilled map `name` of `(operator, key)`
    /// from field `from` on (all of them for `""`), in field order, each
    /// checksum verified, until `f` returns `false`.
    pub fn map_fields(
        &self,
        operator: &str,
        key: &str,
        name: &str,
        from: &str,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let Some(fields) = &self.fields else {
                return Ok(());
            };
            let end = next_name(name);
            let range = (operator, key, name, from)..(operator, key, end.as_str(), "");
            for row in fields.range(range).map_err(|e| db_err(dir, e))? {
                let (k, v) = row.map_err(|e| db_err(dir, e))?;
                let field = k.value().3;
                let value = value_of(field, v.value()).map_err(|r| StoreError::CorruptState {
                    dir: dir.to_path_buf(),
                    operator: operator.to_string(),
                    key: key.to_string(),
                    reason: format!("map `{name}`: field {field:?}: {r}"),
                })?;
                if !f(field, value) {
                    break;
                }
            }
            Ok(())
        })
    }
}

impl Store {
    /// Every stored field of spilled map `name` of `(operator, key)`, as
    /// committed, in field order (see [`Reader::map_fields`]).
    pub fn map_fields(
        &self,
        operator: &str,
        key: &str,
        name: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        self.reader()?
            .map_fields(operator, key, name, "", &mut |f, v| {
                out.push((f.to_string(), v.to_vec()));
                true
            })?;
        Ok(out)
    }

    /// Number of stored fields of spilled maps of `operator` (rows of
    /// their own), for tests and tools.
    pub fn map_field_count(&self, operator: &str) -> Result<u64, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = match txn.open_table(MAP_FIELDS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(db_err(dir, e)),
            };
            let mut n = 0;
            for item in table
                .range((operator, "", "", "")..)
                .map_err(|e| db_err(dir, e))?
            {
                let (k, _) = item.map_err(|e| db_err(dir, e))?;
                if k.value().0 != operator {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    /// Items `from..to` (absolute indexes) of spilled list `name` of
    /// `(operator, key)`, as committed (see [`Reader::list_items`]).
    pub fn list_items(
        &self,
        operator: &str,
        key: &str,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        self.reader()?
            .list_items(operator, key, name, from, to, &mut |i| out.push(i.to_vec()))?;
        Ok(out)
    }

    /// Number of stored items of spilled lists of `operator` (rows of
    /// their own), for tests and tools.
    pub fn list_item_count(&self, operator: &str) -> Result<u64, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = match txn.open_table(LIST_ITEMS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(db_err(dir, e)),
            };
            let mut n = 0;
            for item in table
                .range((operator, "", "", 0)..)
                .map_err(|e| db_err(dir, e))?
            {
                let (k, _) = item.map_err(|e| db_err(dir, e))?;
                if k.value().0 != operator {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    /// Size of `state.redb` in bytes.
    pub fn file_size(&self) -> Result<u64, StoreError> {
        std::fs::metadata(self.dir.join(DB_FILE))
            .map(|m| m.len())
            .map_err(|error| StoreError::Io {
                dir: self.dir.clone(),
                error,
            })
    }

    /// Compacts `state.redb`: moves live pages to the front and gives the
    /// space freed by deleted and expired state back to the file system.
    /// Only on a store no one reads (a stopped pipeline's directory);
    /// returns the file's size after.
    pub fn compact(self) -> Result<u64, StoreError> {
        match self.compact_now()? {
            Some(_) => self.file_size(),
            None => Err(StoreError::Locked { dir: self.dir }),
        }
    }

    /// The size of `state.redb` and how many of its bytes are free
    /// (pages no table uses: what compaction can give back), in one write
    /// transaction that is not committed. It walks every table's pages,
    /// so it costs about a read of the file's live part.
    pub fn free_space(&self) -> Result<FreeSpace, StoreError> {
        let dir = &self.dir;
        let used = guard(dir, || {
            let txn = self.db().begin_write().map_err(|e| db_err(dir, e))?;
            let stats = txn.stats().map_err(|e| db_err(dir, e))?;
            txn.abort().map_err(|e| db_err(dir, e))?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })?;
        let file = self.file_size()?;
        Ok(FreeSpace {
            file,
            free: file.saturating_sub(used),
        })
    }

    /// Compacts `state.redb` now if no transaction is open on it (see
    /// [`Store::compact`]): returns the file's size after, or `None` when
    /// a reader or writer was open (nothing changed; try again when they
    /// are done). No transaction can begin while it runs (they wait): a
    /// running pipeline calls it at a quiet moment, with its workers'
    /// readers let go (see `docs/state-cache.md`).
    pub fn compact_now(&self) -> Result<Option<u64>, StoreError> {
        let dir = &self.dir;
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = guard(dir, || match db.compact() {
            Ok(_) => Ok(true),
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(db_err(dir, e)),
        })?;
        drop(db);
        match done {
            true => self.file_size().map(Some),
            false => Ok(None),
        }
    }
}

/// What [`Store::free_space`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// Size of `state.redb` in bytes.
    pub file: u64,
    /// Bytes of it that no table uses.
    pub free: u64,
}

impl Store {
    /// Group mode: replaces what operator `operator` holds for the keys
    /// `select` picks (the keys of partitions this process takes over) by
    /// `writes`, the partitions' state read from their changelog (`None`:
    /// the key was deleted), and their pending timers by `timers` (`(key,
    /// name, time)`), in one durable transaction. Each record's checksum
    /// is verified first. The rows of spilled lists and maps of every key
    /// removed or written are deleted too (a directory may hold spilled
    /// state from runs outside group mode; the changelog carries whole
    /// records). Returns how many stored keys were removed and how many
    /// written.
    pub fn replace_keys(
        &self,
        operator: &str,
        select: &dyn Fn(&str) -> bool,
        writes: &[(String, Option<Vec<u8>>)],
        timers: &[(String, String, i64)],
    ) -> Result<(usize, usize), StoreError> {
        let dir = &self.dir;
        for (key, record) in writes {
            if let Some(r) = record {
                check_record(dir, operator, key, r)?;
            }
        }
        guard(dir, || {
            let txn = self.db().begin_write().map_err(|e| db_err(dir, e))?;
            let (mut removed, mut written) = (0, 0);
            {
                let mut table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                let mut stale = Vec::new();
                for item in table.range((operator, "")..).map_err(|e| db_err(dir, e))? {
                    let (k, _) = item.map_err(|e| db_err(dir, e))?;
                    let (op, key) = k.value();
                    if op != operator {
                        break;
                    }
                    if select(key) {
                        stale.push(key.to_string());
                    }
                }
                for key in &stale {
                    table
                        .remove((operator, key.as_str()))
                        .map_err(|e| db_err(dir, e))?;
                    removed += 1;
                }
                // Rows of spilled lists and maps of the keys replaced:
                // every row `(operator, key, ..)` lies below `(operator,
                // key + NUL, ..)`, the next key in order.
                let replaced = stale.iter().chain(writes.iter().map(|(k, _)| k));
                let tables: Vec<String> = txn
                    .list_tables()
                    .map_err(|e| db_err(dir, e))?
                    .map(|t| t.name().to_string())
                    .collect();
                let has = |t: &str| tables.iter().any(|n| n == t);
                let (lists, maps) = (has(LIST_ITEMS.name()), has(MAP_FIELDS.name()));
                if lists || maps {
                    let mut items = match lists {
                        true => Some(txn.open_table(LIST_ITEMS).map_err(|e| db_err(dir, e))?),
                        false => None,
                    };
                    let mut fields = match maps {
                        true => Some(txn.open_table(MAP_FIELDS).map_err(|e| db_err(dir, e))?),
                        false => None,
                    };
                    for key in replaced {
                        let end = next_name(key);
                        if let Some(items) = &mut items {
                            items
                                .retain_in(
                                    (operator, key.as_str(), "", 0)
                                        ..(operator, end.as_str(), "", 0),
                                    |_, _| false,
                                )
                                .map_err(|e| db_err(dir, e))?;
                        }
                        if let Some(fields) = &mut fields {
                            fields
                                .retain_in(
                                    (operator, key.as_str(), "", "")
                                        ..(operator, end.as_str(), "", ""),
                                    |_, _| false,
                                )
                                .map_err(|e| db_err(dir, e))?;
                        }
                    }
                }
                for (key, record) in writes {
                    match record {
                        Some(r) => {
                            table
                                .insert((operator, key.as_str()), r.as_slice())
                                .map_err(|e| db_err(dir, e))?;
                            written += 1;
                        }
                        None => {
                            table
                                .remove((operator, key.as_str()))
                                .map_err(|e| db_err(dir, e))?;
                        }
                    }
                }
                let mut table = txn.open_table(TIMERS).map_err(|e| db_err(dir, e))?;
                let mut stale = Vec::new();
                for item in table
                    .range((operator, "", "")..)
                    .map_err(|e| db_err(dir, e))?
                {
                    let (k, _) = item.map_err(|e| db_err(dir, e))?;
                    let (op, key, name) = k.value();
                    if op != operator {
                        break;
                    }
                    if select(key) {
                        stale.push((key.to_string(), name.to_string()));
                    }
                }
                for (key, name) in &stale {
                    table
                        .remove((operator, key.as_str(), name.as_str()))
                        .map_err(|e| db_err(dir, e))?;
                }
                for (key, name, at) in timers {
                    table
                        .insert((operator, key.as_str(), name.as_str()), *at)
                        .map_err(|e| db_err(dir, e))?;
                }
            }
            txn.commit().map_err(|e| db_err(dir, e))?;
            Ok((removed, written))
        })
    }
}
