//! Opening the state directory: its checks, the database, the format.

use std::io::Read;
use std::path::Path;

use redb::Database;

use super::files::file_kind;
use super::*;

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
        Self::open_with(dir, false, None)
    }

    /// [`Store::open`] (with `verify`, [`Store::open_verified`]) with
    /// redb's page cache limited to `cache_bytes` (redb's default is
    /// 1 GiB): a pipeline's memory budget counts it.
    pub fn open_with_cache(
        dir: &Path,
        verify: bool,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        Self::open_with(dir, verify, Some(cache_bytes))
    }

    /// [`Store::open`], verifying the checksum of every page of the
    /// database before anything is read: a damaged page anywhere stops the
    /// open. It reads the whole file (about 1 s and as much memory as the
    /// file for 366 MB of state), so it is opt-in (`eddy run
    /// --verify-state`, `[state] verify_on_open`).
    pub fn open_verified(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, true, None)
    }

    fn open_with(dir: &Path, verify: bool, cache: Option<usize>) -> Result<Store, StoreError> {
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
                Self::open_existing(dir, &path, verify, cache)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(dir, &path, cache),
            Err(e) => Err(io(e)),
        }
    }

    /// Opens the existing database `path` of `dir` (with `verify`,
    /// checking every page).
    fn open_existing(
        dir: &Path,
        path: &Path,
        verify: bool,
        cache: Option<usize>,
    ) -> Result<Store, StoreError> {
        let db = guard(dir, || open_db(dir, path, false, verify, cache))?;
        let store = Store {
            db: Arc::new(std::sync::RwLock::new(db)),
            dir: dir.to_path_buf(),
            durable: Default::default(),
        };
        store.check_format(path)?;
        Ok(store)
    }

    /// Makes a new database for `dir` under a temporary name, writes its
    /// `format`, then links it into place as `path` (unless another eddy
    /// was quicker: then that one is opened). So `state.redb` always has
    /// its `format`.
    fn create(dir: &Path, path: &Path, cache: Option<usize>) -> Result<Store, StoreError> {
        let io = |error| StoreError::Io {
            dir: dir.to_path_buf(),
            error,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".state.redb.")
            .suffix(".new")
            .tempfile_in(dir)
            .map_err(io)?;
        let db = guard(dir, || open_db(dir, tmp.path(), true, false, cache))?;
        let store = Store {
            db: Arc::new(std::sync::RwLock::new(db)),
            dir: dir.to_path_buf(),
            durable: Default::default(),
        };
        guard(dir, || {
            let txn = store.db().begin_write().map_err(|e| db_err(dir, e))?;
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
                Self::open_existing(dir, path, false, cache)
            }
            Err(e) => Err(io(e.error)),
        }
    }

    /// Checks the `format` of an existing database: refuses one without
    /// it (not Eddy's) or of another version, upgrades format 1 (metadata
    /// without checksums) in place.
    fn check_format(&self, file: &Path) -> Result<(), StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_write().map_err(|e| db_err(dir, e))?;
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
}

/// Opens (`create`: initialises an empty file) the redb database `path`;
/// with `verify`, checking every page's checksum.
fn open_db(
    dir: &Path,
    path: &Path,
    create: bool,
    verify: bool,
    cache: Option<usize>,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_check_integrity_on_open(verify);
    if let Some(bytes) = cache {
        builder.set_cache_size(bytes);
    }
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
pub(super) fn check_private(dir: &Path, path: &Path, nofollow: bool) -> Result<(), StoreError> {
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
