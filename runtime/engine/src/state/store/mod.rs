//! The state directory: one redb database holding every operator's per-key
//! state and the checkpoint metadata (input position, output lengths), and
//! a `components/` folder with every component version that ran.
//!
//! A checkpoint is one write transaction ([`Store::commit`]), so state and
//! the position it corresponds to are always consistent with each other.
//!
//! # Damage and tampering
//!
//! - The directory holds compiled code's sources and the control socket: it
//!   is created mode 0700, and one that another user owns or can write is
//!   refused ([`StoreError::Unsafe`]).
//! - Only a missing `state.redb` starts fresh. An empty file, a file that is
//!   not a redb database or a redb database without Eddy's `format`
//!   metadata is an error, never an empty state read from position 0. A new
//!   database is made under a temporary name and linked into place once it
//!   has its `format`, so an interrupted first start leaves no such file.
//! - A panic of redb on a damaged page becomes [`StoreError::Damaged`];
//!   with [`Store::open_verified`] redb checks every page's checksum when
//!   the database is opened (opt-in: it reads the whole file).
//! - Every state record carries a checksum (see [`crate::state`]) and every
//!   metadata value a CRC-32 of its name and bytes: one changed byte is an
//!   error naming the key, never a wrong count.
//! - A kept component is named by the SHA-256 of its bytes and checked
//!   against its name when read back ([`Store::load_component`]).
//!
//! # Layout
//!
//! - [`open`]: opening (or creating) the directory and its database,
//!   format checks and upgrades.
//! - [`components`]: the component versions kept in `components/`.
//! - [`snapshot`]: a consistent copy of the directory ([`Store::snapshot`]).
//! - [`files`]: reading files safely (no FIFO, device or link followed;
//!   owner and mode checks), shared with the compile cache.
//! - here: [`Store`], checkpoints ([`Store::commit`]), metadata, readers.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::state::{ListRows, MapRows};
use thiserror::Error;

mod changelog;
mod components;
mod files;
mod open;
mod query;
mod read;
mod snapshot;
#[cfg(test)]
mod tests;

pub use changelog::{ChangelogTimer, ChangelogWrite};
pub use components::{
    component_hash, component_hash_of, is_short_version_id, legacy_component_hash,
    SHORT_VERSION_ID_LEN, VERSION_ID_LEN,
};
pub use files::{create_private_dir, euid, read_regular_file, unsafe_reason};
pub use read::{FreeSpace, Reader};
pub use snapshot::{SnapshotError, SnapshotReport, SnapshotSource};

/// `(operator name, key)` -> encoded [`crate::state::Entity`].
const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("state");
/// `(operator name, key, list name, index)` -> an item of a spilled list
/// (see [`crate::state::List`]): its bytes, then a CRC-32 of its index
/// and bytes ([`item_row`]).
const LIST_ITEMS: TableDefinition<(&str, &str, &str, u64), &[u8]> =
    TableDefinition::new("list_items");
/// `(operator name, key, map name, field)` -> a field of a spilled map
/// (see [`crate::state::Map`]): its value, then a CRC-32 of its field and
/// value ([`field_row`]).
const MAP_FIELDS: TableDefinition<(&str, &str, &str, &str), &[u8]> =
    TableDefinition::new("map_fields");
/// `(operator name, key, timer name)` -> the time the pending timer fires
/// at (see [`TimerWrite`]).
const TIMERS: TableDefinition<(&str, &str, &str), i64> = TableDefinition::new("timers");
/// Checkpoint metadata: `format`, `source:<input>`, `sink:<output>`,
/// `versions:<operator>` (see [`Store::meta_json`]). Every value but
/// `format` ends with a CRC-32 of the entry's name and value (format 2).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Version of the state directory layout; bumped on incompatible changes.
/// Format 2 adds a checksum to every metadata value; a format 1 directory
/// is upgraded in place when opened.
pub const STORE_FORMAT: u32 = 2;
const DB_FILE: &str = "state.redb";
/// Folder of the state directory holding every component version that ran
/// (`<content hash>.wasm`), so a restart or rollback finds it.
const COMPONENTS_DIR: &str = "components";
/// Largest component file read (a Python or JavaScript operator, which
/// carries its interpreter, is some tens of MiB).
pub const MAX_COMPONENT_BYTES: u64 = 512 << 20;
/// What to do about a damaged state directory, for error messages.
const RESTORE: &str =
    "restore the state directory from a backup, or start over with a fresh --state directory";

/// Errors of the state directory.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state directory {dir}: the file system is full ({error}): what was being written is not committed, and every committed checkpoint is intact: free some space and run again, which resumes from the last committed checkpoint")]
    /// The file system holding the state directory is full.
    Full {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error("state directory {dir}: {error}")]
    /// A file operation failed.
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error("state directory {dir} is not a directory")]
    /// The path is not a directory.
    NotADirectory {
        /// The state directory.
        dir: PathBuf,
    },
    #[error("state directory {dir}: {file} is not an eddy state database or is corrupt ({error}); {RESTORE} (or delete the file to start over)")]
    /// `state.redb` is not a redb database.
    NotADatabase {
        /// The state directory.
        dir: PathBuf,
        /// The file in the state directory.
        file: PathBuf,
        /// The underlying error.
        error: String,
    },
    #[error("state directory {dir}: {file} is empty (0 bytes): it is not an Eddy state database (an interrupted copy, a full disk or a damaged file system?); restore it from a backup, or delete it to start over from empty state at the beginning of the input")]
    /// `state.redb` is empty.
    Empty {
        /// The state directory.
        dir: PathBuf,
        /// The file in the state directory.
        file: PathBuf,
    },
    #[error("state directory {dir}: {file} is a redb database without Eddy's `format` metadata: it is not an Eddy state database; pick another --state directory, or delete the file to start over from empty state at the beginning of the input")]
    /// `state.redb` is not Eddy's.
    NotEddy {
        /// The state directory.
        dir: PathBuf,
        /// The file in the state directory.
        file: PathBuf,
    },
    #[error("state directory {dir}: the state database is damaged ({detail}); {RESTORE}")]
    /// The database is damaged.
    Damaged {
        /// The state directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    #[error("state directory {dir} is in use by another running eddy (its database is locked); stop that one or pick another --state directory")]
    /// Another process uses the directory.
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    #[error("state directory {dir} was written by an incompatible version (state format {found}, this eddy reads {STORE_FORMAT})")]
    /// A format this eddy does not read.
    Incompatible {
        /// The state directory.
        dir: PathBuf,
        /// What was found instead.
        found: String,
    },
    #[error("state directory {dir}: database error: {error}")]
    /// redb failed.
    Db {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        error: redb::Error,
    },
    #[error("state directory {dir}: metadata `{name}` is corrupt: {reason}; {RESTORE}")]
    /// A metadata entry is corrupt.
    CorruptMeta {
        /// The state directory.
        dir: PathBuf,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    #[error("state of operator `{operator}` for key `{key}` is corrupt: {reason}; {RESTORE}")]
    /// A key's state record is corrupt.
    Corrupt {
        /// The operator.
        operator: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    #[error("state directory {dir}: the stored state of operator `{operator}` for key `{key}` is corrupt ({reason}); {RESTORE}")]
    /// A stored record is corrupt.
    CorruptState {
        /// The state directory.
        dir: PathBuf,
        /// The operator.
        operator: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    #[error("state directory {dir}: {path} {reason}; compiled code and the control socket live there, so it must belong to the user running eddy (uid {euid}) and be writable by no one else: `chown {euid} {path} && chmod 700 {path}`, or pick another --state directory")]
    /// A path another user owns or may write.
    Unsafe {
        /// The state directory.
        dir: PathBuf,
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
        /// The user running eddy.
        euid: u32,
    },
    #[error("state directory {dir}: kept component {file}: {reason}; it is not the version recorded in the state directory, so it is not run: restore the file from the component that was swapped in (or from a backup)")]
    /// A kept component does not match its name.
    BadComponent {
        /// The state directory.
        dir: PathBuf,
        /// The file in the state directory.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Position reached in one input: where to resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourcePos {
    /// Byte offset of the next unread line.
    pub offset: u64,
    /// Number of lines read (the next line's number is `line + 1`).
    pub line: u64,
}

/// One key's state to write at a checkpoint: `None` deletes it.
#[derive(Debug, Clone)]
pub struct StateWrite {
    /// The operator.
    pub operator: Arc<str>,
    /// The key (kept inline, without an allocation, up to 24 bytes).
    pub key: compact_str::CompactString,
    /// Its encoded record (`None`: delete it).
    pub record: Option<Vec<u8>>,
    /// Rows of its spilled lists to delete and write, in order.
    pub lists: Vec<ListRows>,
    /// Rows of its spilled maps to delete and write, in order.
    pub maps: Vec<MapRows>,
}

/// A spilled map's field as stored: its value, then a CRC-32 (LE) of its
/// field's name and value, so a damaged or misplaced row is an error.
fn field_row(field: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 4);
    v.extend_from_slice(value);
    v.extend_from_slice(&field_sum(field, value).to_le_bytes());
    v
}

/// CRC-32 of a spilled map field's name (with its length) and value.
fn field_sum(field: &str, value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(field.len() as u32).to_le_bytes());
    h.update(field.as_bytes());
    h.update(value);
    h.finalize()
}

/// A stored map field's value, its checksum verified.
fn value_of<'a>(field: &str, row: &'a [u8]) -> Result<&'a [u8], &'static str> {
    if row.len() < 4 {
        return Err("a map field row is shorter than its checksum");
    }
    let (value, sum) = row.split_at(row.len() - 4);
    if field_sum(field, value).to_le_bytes() != sum {
        return Err("checksum mismatch in a map field row: it was changed after it was written");
    }
    Ok(value)
}

/// The smallest map name after `name` (`name` and a NUL byte): the rows of
/// map `name` are those from `(.., name, "")` up to `(.., next_name(name), "")`.
fn next_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 1);
    s.push_str(name);
    s.push('\0');
    s
}

/// A spilled list item as stored: its bytes, then a CRC-32 (LE) of its
/// index (LE) and bytes, so a damaged or misplaced row is an error.
fn item_row(index: u64, item: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(item.len() + 4);
    v.extend_from_slice(item);
    v.extend_from_slice(&item_sum(index, item).to_le_bytes());
    v
}

/// CRC-32 of a spilled list item's index and bytes.
fn item_sum(index: u64, item: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(item);
    h.finalize()
}

/// A stored list item's bytes, its checksum verified.
fn item_of(index: u64, row: &[u8]) -> Result<&[u8], &'static str> {
    if row.len() < 4 {
        return Err("a list item row is shorter than its checksum");
    }
    let (item, sum) = row.split_at(row.len() - 4);
    if item_sum(index, item).to_le_bytes() != sum {
        return Err("checksum mismatch in a list item row: it was changed after it was written");
    }
    Ok(item)
}

/// Kafka group mode: the tag of a key's state record in a changelog topic
/// (the record key is the tag, then the key).
pub const CHANGELOG_STATE: u8 = b's';
/// Kafka group mode: the tag of a pending timer or TTL deadline in a
/// changelog topic (the record key is the tag, the key, a NUL byte and the
/// timer's name; the value its time, i64 little-endian).
pub const CHANGELOG_TIMER: u8 = b't';

/// One pending timer to write at a checkpoint: `None` deletes it (it fired
/// or was cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerWrite {
    /// The operator.
    pub operator: Arc<str>,
    /// The key it belongs to.
    pub key: Box<str>,
    /// Its name.
    pub name: Box<str>,
    /// When it fires (`None`: delete it).
    pub at: Option<i64>,
}

/// The state writes of a checkpoint, in parts: each worker's as it handed
/// them over, never copied into one vector (a checkpoint of a million keys
/// would otherwise be held twice, and copied while the input waits).
#[derive(Debug, Clone, Default)]
pub struct Writes {
    parts: Vec<Vec<StateWrite>>,
}

impl Writes {
    /// Adds `w` (to the last part).
    pub fn push(&mut self, w: StateWrite) {
        if self.parts.is_empty() {
            self.parts.push(Vec::new());
        }
        let last = self.parts.len() - 1;
        self.parts[last].push(w);
    }

    /// A new, empty part to fill.
    pub fn part(&mut self) -> &mut Vec<StateWrite> {
        self.parts.push(Vec::new());
        let last = self.parts.len() - 1;
        &mut self.parts[last]
    }

    /// Adds a part as it is.
    pub fn add(&mut self, part: Vec<StateWrite>) {
        if !part.is_empty() {
            self.parts.push(part);
        }
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    /// No writes.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Vec::is_empty)
    }

    /// The writes, part after part.
    pub fn iter(&self) -> impl Iterator<Item = &StateWrite> {
        self.parts.iter().flatten()
    }
}

impl From<Vec<StateWrite>> for Writes {
    fn from(part: Vec<StateWrite>) -> Writes {
        Writes { parts: vec![part] }
    }
}

impl FromIterator<StateWrite> for Writes {
    fn from_iter<I: IntoIterator<Item = StateWrite>>(iter: I) -> Writes {
        Writes::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Writes {
    type Item = &'a StateWrite;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<StateWrite>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.parts.iter().flatten()
    }
}

/// Everything one checkpoint makes durable, in one transaction.
pub struct Checkpoint {
    /// State changed since the last checkpoint.
    pub writes: Writes,
    /// Timers changed since the last checkpoint.
    pub timers: Vec<TimerWrite>,
    /// `(input id, position)`; `None` for inputs that cannot resume (stdin).
    pub source: Option<(String, SourcePos)>,
    /// `(output id, length in bytes)` of file outputs written so far.
    pub sinks: Vec<(String, u64)>,
    /// Other metadata to write: `(name, value)` (operator versions).
    pub meta: Vec<(String, Vec<u8>)>,
    /// The checkpoint's number in this run (1, 2, ...; 0 for commits
    /// outside the checkpoint sequence): once it commits,
    /// [`Store::durable_seq`] reports it, so a worker knows which of the
    /// states it handed over it may drop from its cache.
    pub seq: u64,
    /// Written to disk before [`Store::commit`] returns. When `false`
    /// the commit is visible to readers at
    /// once but reaches the disk with the next durable one: a crash in
    /// between resumes from the last durable checkpoint, whose state,
    /// input position and output lengths agree as in any crash.
    pub durable: bool,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            writes: Writes::default(),
            timers: Vec::new(),
            source: None,
            sinks: Vec::new(),
            meta: Vec::new(),
            seq: 0,
            durable: true,
        }
    }
}

/// The open state directory. Cheap to clone; shared by all threads.
#[derive(Clone)]
pub struct Store {
    /// The database. Every transaction begins under the read lock;
    /// compaction ([`Store::compact_now`]), which needs the database to
    /// itself, takes the write lock, so no transaction begins meanwhile.
    db: Arc<std::sync::RwLock<Database>>,
    dir: PathBuf,
    /// The largest [`Checkpoint::seq`] committed so far.
    durable: Arc<std::sync::atomic::AtomicU64>,
}

fn db_err(dir: &Path, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(error) if error.kind() == std::io::ErrorKind::StorageFull => {
            StoreError::Full {
                dir: dir.to_path_buf(),
                error,
            }
        }
        redb::Error::Corrupted(detail) => StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail: format!("redb: {detail}"),
        },
        error => StoreError::Db {
            dir: dir.to_path_buf(),
            error,
        },
    }
}

thread_local! {
    /// Depth of [`guard`] calls on this thread: a panic inside one is
    /// reported as an error, so the panic hook stays quiet.
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` (redb calls), turning a panic, which redb raises on some
/// damaged pages, into [`StoreError::Damaged`] naming `dir`.
fn guard<T>(dir: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) == 0 {
                previous(info)
            }
        }));
    });
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail: format!("redb failed reading it: {what}"),
        })
    })
}

/// CRC-32 of a metadata entry: its name, a zero byte and its value.
fn meta_sum(name: &str, value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(value);
    h.finalize()
}

/// A metadata value as stored: the value, then [`meta_sum`] (LE).
fn seal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 4);
    v.extend_from_slice(value);
    v.extend_from_slice(&meta_sum(name, value).to_le_bytes());
    v
}

impl Store {
    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database, to begin a transaction (the lock is held only while
    /// it begins: a transaction does not borrow the database).
    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Metadata `name`, its checksum verified and removed.
    pub(crate) fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = &self.dir;
        let raw = guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let meta = txn.open_table(META).map_err(|e| db_err(dir, e))?;
            let v = meta
                .get(name)
                .map_err(|e| db_err(dir, e))?
                .map(|v| v.value().to_vec());
            Ok(v)
        })?;
        let Some(mut v) = raw else { return Ok(None) };
        let corrupt = |reason: &str| StoreError::CorruptMeta {
            dir: dir.clone(),
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if v.len() < 4 {
            return Err(corrupt("it is shorter than its checksum"));
        }
        let sum = u32::from_le_bytes(v[v.len() - 4..].try_into().unwrap());
        v.truncate(v.len() - 4);
        if meta_sum(name, &v) != sum {
            return Err(corrupt(
                "checksum mismatch: the value was changed after it was written",
            ));
        }
        Ok(Some(v))
    }

    /// Metadata `name` that must be `N` bytes long.
    fn meta_fixed<const N: usize>(&self, name: &str) -> Result<Option<[u8; N]>, StoreError> {
        match self.meta(name)? {
            None => Ok(None),
            Some(v) => {
                let len = v.len();
                v.try_into().map(Some).map_err(|_| StoreError::CorruptMeta {
                    dir: self.dir.clone(),
                    name: name.to_string(),
                    reason: format!("{len} bytes where {N} were expected"),
                })
            }
        }
    }

    /// The checkpointed position of input `id`, if any.
    pub fn source_pos(&self, id: &str) -> Result<Option<SourcePos>, StoreError> {
        Ok(self
            .meta_fixed::<16>(&format!("source:{id}"))?
            .map(|v| SourcePos {
                offset: u64::from_le_bytes(v[..8].try_into().unwrap()),
                line: u64::from_le_bytes(v[8..].try_into().unwrap()),
            }))
    }

    /// The checkpointed watermark of input `id`, if any.
    pub fn watermark(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta_fixed::<8>(&format!("watermark:{id}"))?
            .map(i64::from_le_bytes))
    }

    /// Every pending timer of `operator` as `(key, name, time)`, in key
    /// and name order.
    pub fn timers(&self, operator: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut out = Vec::new();
        self.each_timer(operator, |key, name, at| {
            out.push((key.to_string(), name.to_string(), at));
            true
        })?;
        Ok(out)
    }

    /// The first pending timer of `operator` the operator set itself (a
    /// name not starting with NUL: the host's own, such as state TTL
    /// deadlines, are passed over), as `(key, name, time)`, in key and
    /// name order.
    pub fn first_operator_timer(
        &self,
        operator: &str,
    ) -> Result<Option<(String, String, i64)>, StoreError> {
        let mut first = None;
        self.each_timer(operator, |key, name, at| {
            if name.starts_with('\0') {
                return true;
            }
            first = Some((key.to_string(), name.to_string(), at));
            false
        })?;
        Ok(first)
    }

    /// Calls `f` with each pending timer of `operator` (key, name, time),
    /// in key and name order, while it returns `true`.
    fn each_timer(
        &self,
        operator: &str,
        mut f: impl FnMut(&str, &str, i64) -> bool,
    ) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = match txn.open_table(TIMERS) {
                Ok(t) => t,
                // No timer was ever written.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(db_err(dir, e)),
            };
            for item in table
                .range((operator, "", "")..)
                .map_err(|e| db_err(dir, e))?
            {
                let (k, v) = item.map_err(|e| db_err(dir, e))?;
                let (op, key, name) = k.value();
                if op != operator || !f(key, name, v.value()) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The checkpointed length of output `id`, if any.
    pub fn sink_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta_fixed::<8>(&format!("sink:{id}"))?
            .map(u64::from_le_bytes))
    }

    /// The largest [`Checkpoint::seq`] committed so far: a [`Reader`]
    /// made after reading it sees every state write of that checkpoint and
    /// of the ones before.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes a checkpoint durable in one write transaction.
    pub fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let mut txn = self.db().begin_write().map_err(|e| db_err(dir, e))?;
            if !cp.durable {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| db_err(dir, redb::Error::from(e)))?;
            }
            {
                let mut state = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                // In key order: each insert lands next to the one before
                // in the tree, so a checkpoint of many keys touches each
                // page once instead of at random.
                let mut order: Vec<&StateWrite> = Vec::with_capacity(cp.writes.len());
                order.extend(cp.writes.iter());
                order
                    .sort_unstable_by(|a, b| (&*a.operator, &*a.key).cmp(&(&*b.operator, &*b.key)));
                for w in &order {
                    match &w.record {
                        Some(r) => state
                            .insert((&*w.operator, &*w.key), r.as_slice())
                            .map(drop),
                        None => state.remove((&*w.operator, &*w.key)).map(drop),
                    }
                    .map_err(|e| db_err(dir, e))?;
                }
                if order.iter().any(|w| !w.lists.is_empty()) {
                    let mut items = txn.open_table(LIST_ITEMS).map_err(|e| db_err(dir, e))?;
                    for w in &order {
                        for l in &w.lists {
                            let (op, key, name) = (&*w.operator, &*w.key, &*l.name);
                            if l.drop_below > 0 {
                                items
                                    .retain_in(
                                        (op, key, name, 0)..(op, key, name, l.drop_below),
                                        |_, _| false,
                                    )
                                    .map_err(|e| db_err(dir, e))?;
                                if l.drop_below == u64::MAX {
                                    items
                                        .remove((op, key, name, u64::MAX))
                                        .map_err(|e| db_err(dir, e))?;
                                }
                            }
                            for (i, item) in l.items.iter().enumerate() {
                                let index = l.first + i as u64;
                                items
                                    .insert(
                                        (op, key, name, index),
                                        item_row(index, item).as_slice(),
                                    )
                                    .map_err(|e| db_err(dir, e))?;
                            }
                        }
                    }
                }
                if order.iter().any(|w| !w.maps.is_empty()) {
                    let mut fields = txn.open_table(MAP_FIELDS).map_err(|e| db_err(dir, e))?;
                    for w in &order {
                        for m in &w.maps {
                            let (op, key, name) = (&*w.operator, &*w.key, &*m.name);
                            if m.clear {
                                let end = next_name(name);
                                fields
                                    .retain_in(
                                        (op, key, name, "")..(op, key, end.as_str(), ""),
                                        |_, _| false,
                                    )
                                    .map_err(|e| db_err(dir, e))?;
                            }
                            for (f, v) in &m.fields {
                                match v {
                                    Some(v) => fields
                                        .insert(
                                            (op, key, name, f.as_str()),
                                            field_row(f, v).as_slice(),
                                        )
                                        .map(drop),
                                    None => fields.remove((op, key, name, f.as_str())).map(drop),
                                }
                                .map_err(|e| db_err(dir, e))?;
                            }
                        }
                    }
                }
                if !cp.timers.is_empty() {
                    let mut timers = txn.open_table(TIMERS).map_err(|e| db_err(dir, e))?;
                    for t in &cp.timers {
                        let k = (&*t.operator, &*t.key, &*t.name);
                        match t.at {
                            Some(at) => timers.insert(k, at).map(drop),
                            None => timers.remove(k).map(drop),
                        }
                        .map_err(|e| db_err(dir, e))?;
                    }
                }
                let mut meta = txn.open_table(META).map_err(|e| db_err(dir, e))?;
                let mut put = |name: &str, value: &[u8]| {
                    meta.insert(name, seal(name, value).as_slice())
                        .map(drop)
                        .map_err(|e| db_err(dir, e))
                };
                if let Some((id, pos)) = &cp.source {
                    let mut v = [0u8; 16];
                    v[..8].copy_from_slice(&pos.offset.to_le_bytes());
                    v[8..].copy_from_slice(&pos.line.to_le_bytes());
                    put(&format!("source:{id}"), &v)?;
                }
                for (id, len) in &cp.sinks {
                    put(&format!("sink:{id}"), &len.to_le_bytes())?;
                }
                for (name, value) in &cp.meta {
                    put(name, value)?;
                }
            }
            txn.commit().map_err(|e| db_err(dir, e))
        })?;
        self.durable
            .fetch_max(cp.seq, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Checkpointed metadata `name` as JSON, if any.
    pub fn meta_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.meta(name)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::CorruptMeta {
                    dir: self.dir.clone(),
                    name: name.to_string(),
                    reason: e.to_string(),
                }),
        }
    }
}
