//! The state directory: one redb database holding every operator's per-key
//! state and the checkpoint metadata (input position, output lengths).
//!
//! A checkpoint is one write transaction ([`Store::commit`]), so state and
//! the position it corresponds to are always consistent with each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

/// `(operator name, key)` -> encoded [`crate::state::Entity`].
const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("state");
/// Checkpoint metadata: `format`, `source:<input>`, `sink:<output>`,
/// `versions:<operator>` (see [`Store::meta_json`]).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Version of the state directory layout; bumped on incompatible changes.
pub const STORE_FORMAT: u32 = 1;
const DB_FILE: &str = "state.redb";
/// Folder of the state directory holding every component version that ran
/// (`<content hash>.wasm`), so a restart or rollback finds it.
const COMPONENTS_DIR: &str = "components";

/// Errors of the state directory.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state directory {dir}: {error}")]
    Io { dir: PathBuf, error: std::io::Error },
    #[error("state directory {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("state directory {dir}: {file} is not an eddy state database or is corrupt ({error})")]
    NotADatabase {
        dir: PathBuf,
        file: PathBuf,
        error: String,
    },
    #[error("state directory {dir} is in use by another running eddy (its database is locked); stop that one or pick another --state directory")]
    Locked { dir: PathBuf },
    #[error("state directory {dir} was written by an incompatible version (state format {found}, this eddy reads {STORE_FORMAT})")]
    Incompatible { dir: PathBuf, found: String },
    #[error("state directory {dir}: database error: {error}")]
    Db { dir: PathBuf, error: redb::Error },
    #[error("state directory {dir}: metadata `{name}` is corrupt: {reason}")]
    CorruptMeta {
        dir: PathBuf,
        name: String,
        reason: String,
    },
    #[error("state of operator `{operator}` for key `{key}` is corrupt: {reason}")]
    Corrupt {
        operator: String,
        key: String,
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
    StoreError::Db {
        dir: dir.to_path_buf(),
        error: e.into(),
    }
}

impl Store {
    /// Opens (creating when missing) the state directory `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Io {
            dir: dir.to_path_buf(),
            error,
        })?;
        let path = dir.join(DB_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(error)))
                if error.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(StoreError::Io {
                    dir: dir.to_path_buf(),
                    error,
                })
            }
            Err(
                e @ (redb::DatabaseError::Storage(_) | redb::DatabaseError::UpgradeRequired(_)),
            ) => {
                return Err(StoreError::NotADatabase {
                    dir: dir.to_path_buf(),
                    file: path,
                    error: e.to_string(),
                })
            }
            Err(e) => return Err(db_err(dir, e)),
        };
        let store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
        };
        store.check_format()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let dir = &self.dir;
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
                    meta.insert("format", STORE_FORMAT.to_string().as_bytes())
                        .map_err(|e| db_err(dir, e))?;
                }
                Some(v) if v == STORE_FORMAT.to_string().as_bytes() => {}
                Some(v) => {
                    return Err(StoreError::Incompatible {
                        dir: dir.clone(),
                        found: String::from_utf8_lossy(&v).into(),
                    })
                }
            }
        }
        txn.commit().map_err(|e| db_err(dir, e))
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = &self.dir;
        let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
        let meta = txn.open_table(META).map_err(|e| db_err(dir, e))?;
        let v = meta
            .get(name)
            .map_err(|e| db_err(dir, e))?
            .map(|v| v.value().to_vec());
        Ok(v)
    }

    /// The checkpointed position of input `id`, if any.
    pub fn source_pos(&self, id: &str) -> Result<Option<SourcePos>, StoreError> {
        Ok(self.meta(&format!("source:{id}"))?.and_then(|v| {
            let v: [u8; 16] = v.try_into().ok()?;
            Some(SourcePos {
                offset: u64::from_le_bytes(v[..8].try_into().unwrap()),
                line: u64::from_le_bytes(v[8..].try_into().unwrap()),
            })
        }))
    }

    /// The checkpointed length of output `id`, if any.
    pub fn sink_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta(&format!("sink:{id}"))?
            .and_then(|v| Some(u64::from_le_bytes(v.try_into().ok()?))))
    }

    /// Makes a checkpoint durable in one write transaction.
    pub fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let dir = &self.dir;
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
            if let Some((id, pos)) = &cp.source {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&pos.offset.to_le_bytes());
                v[8..].copy_from_slice(&pos.line.to_le_bytes());
                meta.insert(format!("source:{id}").as_str(), v.as_slice())
                    .map_err(|e| db_err(dir, e))?;
            }
            for (id, len) in &cp.sinks {
                meta.insert(format!("sink:{id}").as_str(), len.to_le_bytes().as_slice())
                    .map_err(|e| db_err(dir, e))?;
            }
            for (name, value) in &cp.meta {
                meta.insert(name.as_str(), value.as_slice())
                    .map_err(|e| db_err(dir, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(dir, e))
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

    /// Keeps a copy of component `bytes` (content hash `hash`) in the state
    /// directory, durably, unless it is already there.
    pub fn keep_component(&self, hash: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.component_path(hash);
        if path.exists() {
            return Ok(path);
        }
        let io = |error| StoreError::Io {
            dir: self.dir.clone(),
            error,
        };
        let folder = self.dir.join(COMPONENTS_DIR);
        std::fs::create_dir_all(&folder).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&folder).map_err(io)?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(path)
    }

    /// Up to `n` keys of `operator` with committed state, in key order.
    pub fn sample_keys(&self, operator: &str, n: usize) -> Result<Vec<String>, StoreError> {
        let dir = &self.dir;
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
    }

    /// A reader of committed state, for loading keys on first touch.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        let dir = &self.dir;
        let txn = self.db.begin_read().map_err(|e| db_err(dir, e))?;
        let table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
        Ok(Reader {
            table,
            dir: self.dir.clone(),
        })
    }

    /// Every stored `(key, record)` of `operator`, in key order (for tests
    /// and tools).
    pub fn scan(&self, operator: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = &self.dir;
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
    }
}

/// A snapshot of committed state. Workers hold one and renew it at each
/// checkpoint; what they wrote since is in their cache, so a snapshot that
/// is older than the cache is never consulted for those keys.
pub struct Reader {
    table: redb::ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    dir: PathBuf,
}

impl Reader {
    /// The stored record of `(operator, key)`.
    pub fn get(&self, operator: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .table
            .get((operator, key))
            .map_err(|e| db_err(&self.dir, e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }
}
