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

use std::cell::Cell;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// `(operator name, key)` -> encoded [`crate::state::Entity`].
const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("state");
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
    #[error("state directory {dir}: {error}")]
    Io { dir: PathBuf, error: std::io::Error },
    #[error("state directory {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("state directory {dir}: {file} is not an eddy state database or is corrupt ({error}); {RESTORE} (or delete the file to start over)")]
    NotADatabase {
        dir: PathBuf,
        file: PathBuf,
        error: String,
    },
    #[error("state directory {dir}: {file} is empty (0 bytes): it is not an Eddy state database (an interrupted copy, a full disk or a damaged file system?); restore it from a backup, or delete it to start over from empty state at the beginning of the input")]
    Empty { dir: PathBuf, file: PathBuf },
    #[error("state directory {dir}: {file} is a redb database without Eddy's `format` metadata: it is not an Eddy state database; pick another --state directory, or delete the file to start over from empty state at the beginning of the input")]
    NotEddy { dir: PathBuf, file: PathBuf },
    #[error("state directory {dir}: the state database is damaged ({detail}); {RESTORE}")]
    Damaged { dir: PathBuf, detail: String },
    #[error("state directory {dir} is in use by another running eddy (its database is locked); stop that one or pick another --state directory")]
    Locked { dir: PathBuf },
    #[error("state directory {dir} was written by an incompatible version (state format {found}, this eddy reads {STORE_FORMAT})")]
    Incompatible { dir: PathBuf, found: String },
    #[error("state directory {dir}: database error: {error}")]
    Db { dir: PathBuf, error: redb::Error },
    #[error("state directory {dir}: metadata `{name}` is corrupt: {reason}; {RESTORE}")]
    CorruptMeta {
        dir: PathBuf,
        name: String,
        reason: String,
    },
    #[error("state of operator `{operator}` for key `{key}` is corrupt: {reason}; {RESTORE}")]
    Corrupt {
        operator: String,
        key: String,
        reason: String,
    },
    #[error("state directory {dir}: the stored state of operator `{operator}` for key `{key}` is corrupt ({reason}); {RESTORE}")]
    CorruptState {
        dir: PathBuf,
        operator: String,
        key: String,
        reason: String,
    },
    #[error("state directory {dir}: {path} {reason}; compiled code and the control socket live there, so it must belong to the user running eddy (uid {euid}) and be writable by no one else: `chown {euid} {path} && chmod 700 {path}`, or pick another --state directory")]
    Unsafe {
        dir: PathBuf,
        path: PathBuf,
        reason: String,
        euid: u32,
    },
    #[error("state directory {dir}: kept component {file}: {reason}; it is not the version recorded in the state directory, so it is not run: restore the file from the component that was swapped in (or from a backup)")]
    BadComponent {
        dir: PathBuf,
        file: PathBuf,
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
pub struct StateWrite {
    pub operator: Arc<str>,
    pub key: Box<str>,
    pub record: Option<Vec<u8>>,
}

/// Everything one checkpoint makes durable, in one transaction.
#[derive(Default)]
pub struct Checkpoint {
    pub writes: Vec<StateWrite>,
    /// `(input id, position)`; `None` for inputs that cannot resume (stdin).
    pub source: Option<(String, SourcePos)>,
    /// `(output id, length in bytes)` of file outputs written so far.
    pub sinks: Vec<(String, u64)>,
    /// Other metadata to write: `(name, value)` (operator versions).
    pub meta: Vec<(String, Vec<u8>)>,
}

/// The open state directory. Cheap to clone; shared by all threads.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    dir: PathBuf,
}

fn db_err(dir: &Path, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
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

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why a file or directory with metadata `m` is not safe to trust with
/// code: owned by another user, or writable by the group or others.
pub(crate) fn unsafe_reason(m: &std::fs::Metadata) -> Option<String> {
    let me = euid();
    if m.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by you (uid {me})",
            m.uid()
        ));
    }
    let mode = m.mode() & 0o7777;
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some(format!(
            "is writable by its group and by other users (mode {mode:o})"
        )),
        (true, false) => Some(format!("is writable by its group (mode {mode:o})")),
        (false, true) => Some(format!("is writable by other users (mode {mode:o})")),
        (false, false) => None,
    }
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// What kind of file `t` is, for "not a regular file" messages.
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// Reads the regular file `path`, at most `limit` bytes, without ever
/// blocking on a FIFO or reading a device: it is opened with `O_NONBLOCK`
/// (and `O_NOFOLLOW` when `nofollow`), then checked with `fstat` on the
/// open file, so what is checked is what is read.
pub(crate) fn read_regular_file(
    path: &Path,
    limit: u64,
    nofollow: bool,
) -> std::io::Result<Vec<u8>> {
    use rustix::fs::OFlags;
    use std::io::{Error, ErrorKind};
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if nofollow && e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                Error::new(
                    ErrorKind::InvalidInput,
                    "it is a symbolic link, which is not followed here",
                )
            } else {
                e
            }
        })?;
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(m.file_type())),
        ));
    }
    let too_large = |size: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "the file is {size} bytes, over the limit of {limit} bytes ({} MiB)",
                limit >> 20
            ),
        )
    };
    if m.len() > limit {
        return Err(too_large(m.len()));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    (&mut file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The content hash naming a component: the first 16 hex digits of the
/// SHA-256 `digest` of its bytes.
pub fn component_hash_of(digest: &[u8; 32]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The content hash of component `bytes` (see [`component_hash_of`]).
pub fn component_hash(bytes: &[u8]) -> String {
    component_hash_of(&Sha256::digest(bytes).into())
}

/// The name an earlier eddy gave component `bytes` (the 64-bit FxHash of
/// its bytes, which cannot be verified): recognised only to explain or
/// adopt what such an eddy left in a state directory.
pub(crate) fn legacy_component_hash(bytes: &[u8]) -> String {
    use std::hash::BuildHasher;
    format!("{:016x}", rustc_hash::FxBuildHasher.hash_one(bytes))
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
    /// Opens (creating when missing) the state directory `dir`.
    ///
    /// A new directory is made mode 0700; an existing one (or its
    /// `components/` folder) owned by another user or writable by others
    /// is refused. Only a missing `state.redb` starts fresh (see the
    /// module docs).
    ///
    /// Pages are not all read up front (restarting on a large state
    /// directory stays fast and small): every record's checksum is checked
    /// when it is read, and a panic inside redb becomes
    /// [`StoreError::Damaged`]. [`Store::open_verified`] also checks every
    /// page's checksum first.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, false)
    }

    /// [`Store::open`], verifying the checksum of every page of the
    /// database before anything is read: a damaged page anywhere stops the
    /// open. It reads the whole file (about 1 s and as much memory as the
    /// file for 366 MB of state), so it is opt-in (`eddy run
    /// --verify-state`, `[state] verify_on_open`).
    pub fn open_verified(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, true)
    }

    fn open_with(dir: &Path, verify: bool) -> Result<Store, StoreError> {
        let io = |error| StoreError::Io {
            dir: dir.to_path_buf(),
            error,
        };
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::NotADirectory {
                    dir: dir.to_path_buf(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir(dir).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        }
        check_private(dir, dir, false)?;
        let components = dir.join(COMPONENTS_DIR);
        match std::fs::symlink_metadata(&components) {
            Ok(_) => check_private(dir, &components, true)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let path = dir.join(DB_FILE);
        match std::fs::metadata(&path) {
            Ok(m) => {
                if !m.is_file() {
                    return Err(StoreError::NotADatabase {
                        dir: dir.to_path_buf(),
                        file: path,
                        error: format!("it is {}", file_kind(m.file_type())),
                    });
                }
                if m.len() == 0 {
                    return Err(StoreError::Empty {
                        dir: dir.to_path_buf(),
                        file: path,
                    });
                }
                Self::open_existing(dir, &path, verify)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(dir, &path),
            Err(e) => Err(io(e)),
        }
    }

    /// Opens the existing database `path` of `dir` (with `verify`,
    /// checking every page).
    fn open_existing(dir: &Path, path: &Path, verify: bool) -> Result<Store, StoreError> {
        let db = guard(dir, || open_db(dir, path, false, verify))?;
        let store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        };
        store.check_format(path)?;
        Ok(store)
    }

    /// Makes a new database for `dir` under a temporary name, writes its
    /// `format`, then links it into place as `path` (unless another eddy
    /// was quicker: then that one is opened). So `state.redb` always has
    /// its `format`.
    fn create(dir: &Path, path: &Path) -> Result<Store, StoreError> {
        let io = |error| StoreError::Io {
            dir: dir.to_path_buf(),
            error,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".state.redb.")
            .suffix(".new")
            .tempfile_in(dir)
            .map_err(io)?;
        let db = guard(dir, || open_db(dir, tmp.path(), true, false))?;
        let store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        };
        guard(dir, || {
            let txn = store.db.begin_write().map_err(|e| db_err(dir, e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| db_err(dir, e))?;
                txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                meta.insert("format", STORE_FORMAT.to_string().as_bytes())
                    .map_err(|e| db_err(dir, e))?;
            }
            txn.commit().map_err(|e| db_err(dir, e))
        })?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {
                // Make the new name durable before anything is checkpointed.
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
                Ok(store)
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                drop(store);
                drop(e.file);
                Self::open_existing(dir, path, false)
            }
            Err(e) => Err(io(e.error)),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the `format` of an existing database: refuses one without
    /// it (not Eddy's) or of another version, upgrades format 1 (metadata
    /// without checksums) in place.
    fn check_format(&self, file: &Path) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db.begin_write().map_err(|e| db_err(dir, e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| db_err(dir, e))?;
                txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                let found = meta
                    .get("format")
                    .map_err(|e| db_err(dir, e))?
                    .map(|v| v.value().to_vec());
                match found {
                    None => {
                        return Err(StoreError::NotEddy {
                            dir: dir.clone(),
                            file: file.to_path_buf(),
                        })
                    }
                    Some(v) if v == STORE_FORMAT.to_string().as_bytes() => {}
                    Some(v) if v == b"1" => {
                        // Format 1: the same entries, without checksums.
                        let mut all = Vec::new();
                        for item in meta.iter().map_err(|e| db_err(dir, e))? {
                            let (k, v) = item.map_err(|e| db_err(dir, e))?;
                            if k.value() != "format" {
                                all.push((k.value().to_string(), v.value().to_vec()));
                            }
                        }
                        for (name, value) in all {
                            meta.insert(name.as_str(), seal(&name, &value).as_slice())
                                .map_err(|e| db_err(dir, e))?;
                        }
                        meta.insert("format", STORE_FORMAT.to_string().as_bytes())
                            .map_err(|e| db_err(dir, e))?;
                    }
                    Some(v) => {
                        return Err(StoreError::Incompatible {
                            dir: dir.clone(),
                            found: String::from_utf8_lossy(&v).into(),
                        })
                    }
                }
            }
            txn.commit().map_err(|e| db_err(dir, e))
        })
    }

    /// Metadata `name`, its checksum verified and removed.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = &self.dir;
        let raw = guard(dir, || {
            let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
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

    /// The checkpointed length of output `id`, if any.
    pub fn sink_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta_fixed::<8>(&format!("sink:{id}"))?
            .map(u64::from_le_bytes))
    }

    /// Makes a checkpoint durable in one write transaction.
    pub fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db.begin_write().map_err(|e| db_err(dir, e))?;
            {
                let mut state = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                for w in &cp.writes {
                    match &w.record {
                        Some(r) => state
                            .insert((&*w.operator, &*w.key), r.as_slice())
                            .map(drop),
                        None => state.remove((&*w.operator, &*w.key)).map(drop),
                    }
                    .map_err(|e| db_err(dir, e))?;
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
        })
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

    /// Where component `hash` is kept in the state directory.
    pub fn component_path(&self, hash: &str) -> PathBuf {
        self.dir.join(COMPONENTS_DIR).join(format!("{hash}.wasm"))
    }

    /// Keeps a copy of component `bytes` (content hash `hash`, see
    /// [`component_hash`]) in the state directory, durably, unless it is
    /// already there. A kept file that differs (damaged, replaced) is
    /// replaced.
    pub fn keep_component(&self, hash: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.component_path(hash);
        let io = |error| StoreError::Io {
            dir: self.dir.clone(),
            error,
        };
        let folder = self.dir.join(COMPONENTS_DIR);
        if folder.exists() {
            check_private(&self.dir, &folder, true)?;
            match read_regular_file(&path, MAX_COMPONENT_BYTES, true) {
                Ok(kept) if kept == bytes => return Ok(path),
                Ok(_) => tracing::warn!(
                    "replacing {}: its content is not that of component {hash}",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("replacing {}: {e}", path.display()),
            }
        } else {
            create_private_dir(&folder).map_err(io)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&folder).map_err(io)?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The new name (and a new folder's own) must be durable before a
        // checkpoint records the version.
        std::fs::File::open(&folder)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(path)
    }

    /// The bytes of kept component `hash`, checked against its name: read
    /// only from a regular file (not through a symbolic link, at most
    /// [`MAX_COMPONENT_BYTES`]) whose SHA-256 starts with `hash`. A file
    /// that does not match was replaced or damaged and is refused
    /// ([`StoreError::BadComponent`]), so it never runs under the label
    /// of the version recorded in the state directory.
    pub fn load_component(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let file = self.component_path(hash);
        let bad = |reason: String| StoreError::BadComponent {
            dir: self.dir.clone(),
            file: file.clone(),
            reason,
        };
        if hash.len() != 16 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(format!(
                "`{hash}` is not a content hash (16 hex digits of SHA-256); the version was recorded by an older eddy, whose content hashes cannot be verified: swap the component in again from its source file"
            )));
        }
        check_private(&self.dir, &self.dir.join(COMPONENTS_DIR), true)?;
        let bytes = read_regular_file(&file, MAX_COMPONENT_BYTES, true)
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let found = component_hash(&bytes);
        if found != hash {
            if legacy_component_hash(&bytes) == hash {
                return Err(bad(format!(
                    "it was kept by an older eddy, which named versions by a hash that cannot be verified (its SHA-256 name is {found}); swap the component in again from its source file"
                )));
            }
            return Err(bad(format!(
                "its content hash is {found}, not {hash} as its name says: the file was replaced or damaged"
            )));
        }
        Ok(bytes)
    }

    /// Up to `n` keys of `operator` with committed state, in key order.
    pub fn sample_keys(&self, operator: &str, n: usize) -> Result<Vec<String>, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
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
            let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
            let table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
            Ok(Reader {
                table,
                dir: self.dir.clone(),
            })
        })
    }

    /// Every stored `(key, record)` of `operator`, in key order (for tests
    /// and tools); each record's checksum is verified.
    pub fn scan(&self, operator: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = &self.dir;
        let out: Vec<(String, Vec<u8>)> = guard(dir, || {
            let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
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

/// Opens (`create`: initialises an empty file) the redb database `path`;
/// with `verify`, checking every page's checksum.
fn open_db(dir: &Path, path: &Path, create: bool, verify: bool) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_check_integrity_on_open(verify);
    let opened = if create {
        builder.create(path)
    } else {
        builder.open(path)
    };
    match opened {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(error)))
            if error.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(StoreError::Io {
                dir: dir.to_path_buf(),
                error,
            })
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)))
            if is_redb_file(path) =>
        {
            Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: format!("{}: {detail}", path.display()),
            })
        }
        Err(e @ (redb::DatabaseError::Storage(_) | redb::DatabaseError::UpgradeRequired(_))) => {
            Err(StoreError::NotADatabase {
                dir: dir.to_path_buf(),
                file: path.to_path_buf(),
                error: e.to_string(),
            })
        }
        Err(e) => Err(db_err(dir, e)),
    }
}

/// Whether `path` starts with redb's magic number (so a failure to open it
/// is damage, not a file of another kind).
fn is_redb_file(path: &Path) -> bool {
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    let mut head = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == MAGIC)
}

/// Refuses `path` (the state directory `dir` or a folder of it) when
/// another user owns it or can write it; `nofollow`: a symbolic link is
/// refused too.
fn check_private(dir: &Path, path: &Path, nofollow: bool) -> Result<(), StoreError> {
    let m = if nofollow {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    }
    .map_err(|error| StoreError::Io {
        dir: dir.to_path_buf(),
        error,
    })?;
    let reason = if !m.is_dir() {
        Some(format!("is {}, not a directory", file_kind(m.file_type())))
    } else {
        unsafe_reason(&m)
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StoreError::Unsafe {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
            reason,
            euid: euid(),
        }),
    }
}

/// Verifies the checksum of a stored record (see
/// [`crate::state::check_record`]).
fn check_record(dir: &Path, operator: &str, key: &str, record: &[u8]) -> Result<(), StoreError> {
    crate::state::check_record(record).map_err(|e| StoreError::CorruptState {
        dir: dir.to_path_buf(),
        operator: operator.to_string(),
        key: key.to_string(),
        reason: e.0.to_string(),
    })
}

/// A snapshot of committed state. Workers hold one and renew it at each
/// checkpoint; what they wrote since is in their cache, so a snapshot that
/// is older than the cache is never consulted for those keys.
pub struct Reader {
    table: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    dir: PathBuf,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::Mode;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    /// Writes `value` under metadata `name` directly, as format 1 did
    /// (no checksum), or overwrites what is there.
    fn put_raw_meta(path: &Path, name: &str, value: &[u8]) {
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(name, value).unwrap();
        txn.commit().unwrap();
    }

    fn raw_meta(path: &Path, name: &str) -> Vec<u8> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(META).unwrap();
        let v = t.get(name).unwrap().unwrap().value().to_vec();
        v
    }

    #[test]
    fn a_new_state_directory_is_private_and_an_open_one_refuses_other_writers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        let store = Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        store.keep_component(&component_hash(b"x"), b"x").unwrap();
        assert_eq!(mode(&dir.join(COMPONENTS_DIR)), 0o700);
        drop(store);
        // No temporary database is left behind.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [COMPONENTS_DIR, DB_FILE]);

        for (path, m) in [
            (dir.clone(), 0o777),
            (dir.clone(), 0o770),
            (dir.join(COMPONENTS_DIR), 0o722),
        ] {
            set_mode(&path, m);
            let e = Store::open(&dir).err().expect("refused").to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("writable by"), "{e}");
            assert!(e.contains("chmod 700"), "{e}");
            set_mode(&path, 0o700);
        }
        // A components folder that is a symbolic link is refused too.
        std::fs::rename(dir.join(COMPONENTS_DIR), tmp.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(COMPONENTS_DIR)).unwrap();
        let e = Store::open(&dir).err().expect("refused").to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn kept_components_are_checked_against_their_name() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = b"\0asm component bytes".to_vec();
        let hash = component_hash(&bytes);
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, format!("{:x}", Sha256::digest(&bytes))[..16]);
        let path = store.keep_component(&hash, &bytes).unwrap();
        assert_eq!(store.load_component(&hash).unwrap(), bytes);

        // Replaced by other bytes: refused, naming the file.
        std::fs::write(&path, b"\0asm an impostor").unwrap();
        let e = store.load_component(&hash).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("was replaced or damaged"), "{e}");
        // Keeping the component again repairs it.
        store.keep_component(&hash, &bytes).unwrap();
        assert_eq!(store.load_component(&hash).unwrap(), bytes);

        // A symbolic link to the right bytes, a FIFO, a missing file, a
        // name that is not a content hash: refused.
        let elsewhere = tmp.path().join("elsewhere.wasm");
        std::fs::write(&elsewhere, &bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let e = store.load_component(&hash).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = store.load_component(&hash).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a FIFO)"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = store.load_component(&hash).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        // A version kept by an older eddy (FxHash names): said so.
        let legacy = legacy_component_hash(&bytes[..]);
        std::fs::write(store.component_path(&legacy), &bytes).unwrap();
        let e = store.load_component(&legacy).unwrap_err().to_string();
        assert!(e.contains("kept by an older eddy"), "{e}");
        for bad in ["../../etc/passwd", "0123456789abcdeX", "0123"] {
            let e = store.load_component(bad).unwrap_err().to_string();
            assert!(e.contains("is not a content hash"), "{e}");
        }
    }

    #[test]
    fn reading_never_blocks_on_a_fifo_nor_reads_a_device_or_too_much() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for (path, kind) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (tmp.path(), "a directory"),
        ] {
            let e = read_regular_file(path, 1 << 20, false).unwrap_err();
            assert_eq!(e.to_string(), format!("not a regular file ({kind})"));
        }
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![0u8; 2048]).unwrap();
        let e = read_regular_file(&big, 1024, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2048 bytes, over the limit of 1024 bytes"),
            "{e}"
        );
        assert_eq!(read_regular_file(&big, 2048, true).unwrap().len(), 2048);
    }

    #[test]
    fn an_empty_or_foreign_database_is_an_error_not_a_fresh_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join(DB_FILE);
        std::fs::write(&file, b"").unwrap();
        let e = Store::open(dir).err().expect("refused").to_string();
        assert!(e.contains("state.redb is empty (0 bytes)"), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as it is");

        std::fs::remove_file(&file).unwrap();
        {
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<&str, u64>::new("mine"))
                .unwrap()
                .insert("x", 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(dir).err().expect("refused").to_string();
        assert!(e.contains("without Eddy's `format` metadata"), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
    }

    #[test]
    fn metadata_carries_a_checksum_and_format_1_is_upgraded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join(DB_FILE);
        let store = Store::open(dir).unwrap();
        let pos = SourcePos {
            offset: 1234,
            line: 56,
        };
        store
            .commit(&Checkpoint {
                source: Some(("in".into(), pos)),
                sinks: vec![("out".into(), 99)],
                meta: vec![("versions:op".into(), b"{\"a\":1}".to_vec())],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.source_pos("in").unwrap(), Some(pos));
        drop(store);

        // One changed byte of each value: an error naming it.
        for (name, at) in [("source:in", 0), ("sink:out", 1), ("versions:op", 5)] {
            let good = raw_meta(&file, name);
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            put_raw_meta(&file, name, &bad);
            let store = Store::open(dir).unwrap();
            let e = match name {
                "source:in" => store.source_pos("in").unwrap_err(),
                "sink:out" => store.sink_len("out").unwrap_err(),
                _ => store
                    .meta_json::<serde_json::Value>("versions:op")
                    .unwrap_err(),
            }
            .to_string();
            assert!(e.contains(&format!("metadata `{name}` is corrupt")), "{e}");
            assert!(e.contains("checksum mismatch"), "{e}");
            assert!(e.contains(&dir.display().to_string()), "{e}");
            drop(store);
            put_raw_meta(&file, name, &good);
        }
        // A value moved under another name does not verify either.
        put_raw_meta(&file, "sink:other", &raw_meta(&file, "sink:out"));
        let store = Store::open(dir).unwrap();
        assert!(store.sink_len("other").is_err());
        assert_eq!(store.sink_len("out").unwrap(), Some(99));
        drop(store);

        // A format 1 directory (no checksums) opens and is upgraded.
        put_raw_meta(&file, "format", b"1");
        put_raw_meta(&file, "source:in", &[7u8; 16]);
        put_raw_meta(&file, "sink:other", &5u64.to_le_bytes());
        put_raw_meta(&file, "versions:op", b"{\"a\":1}");
        let store = Store::open(dir).unwrap();
        let seven = u64::from_le_bytes([7; 8]);
        assert_eq!(
            store.source_pos("in").unwrap(),
            Some(SourcePos {
                offset: seven,
                line: seven
            })
        );
        assert_eq!(store.sink_len("other").unwrap(), Some(5));
        assert!(store
            .meta_json::<serde_json::Value>("versions:op")
            .unwrap()
            .is_some());
        drop(store);
        assert_eq!(raw_meta(&file, "format"), b"2");
    }

    #[test]
    fn a_changed_record_is_refused_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let store = Store::open(dir).unwrap();
        let names: Vec<Box<str>> = vec!["count".into()];
        let mut e = crate::state::Entity::default();
        e.put(0, b"6");
        let mut record = Vec::new();
        e.encode(&names, &mut record);
        store
            .commit(&Checkpoint {
                writes: vec![StateWrite {
                    operator: "op".into(),
                    key: "user-1".into(),
                    record: Some(record.clone()),
                }],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            store.reader().unwrap().get("op", "user-1").unwrap(),
            Some(record.clone())
        );
        drop(store);
        let at = record.len() - 5;
        record[at] = b'9';
        {
            let db = Database::open(dir.join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(STATE)
                .unwrap()
                .insert(("op", "user-1"), record.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(dir).unwrap();
        for e in [
            store.reader().unwrap().get("op", "user-1").unwrap_err(),
            store.scan("op").unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("operator `op` for key `user-1` is corrupt"),
                "{e}"
            );
            assert!(e.contains("checksum mismatch"), "{e}");
            assert!(e.contains(&dir.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_panic_in_redb_becomes_a_damaged_error() {
        let dir = Path::new("/some/state");
        let e = guard::<()>(dir, || panic!("page 7: bad length")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("state directory /some/state"), "{e}");
        assert!(e.contains("page 7: bad length"), "{e}");
        assert!(
            e.contains("restore the state directory from a backup"),
            "{e}"
        );
        // Calls after it work as before.
        assert_eq!(guard(dir, || Ok(5)).unwrap(), 5);
    }
}
