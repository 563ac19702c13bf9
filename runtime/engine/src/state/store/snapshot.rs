//! Snapshots: a consistent copy of the state directory, made while a
//! pipeline runs on it (`eddy snapshot`, `POST /snapshot`).
//!
//! One read transaction of the database sees exactly the last committed
//! checkpoint, so the copy holds the state, timers, input positions, output
//! lengths and operator versions of one checkpoint, never half of one. Each
//! table is copied record by record into a new database (each state
//! record's checksum verified on the way), made under a temporary name in
//! the destination and linked into place as `state.redb` once complete.
//! The kept components (`components/`) are copied too, so a pipeline
//! started on the copy runs the versions the checkpoint names.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::{MultimapTableHandle, ReadableDatabase, ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

use super::*;

/// What a snapshot holds (the answer of `POST /snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// The directory written.
    pub dest: PathBuf,
    /// State records copied (one per operator and key).
    pub keys: u64,
    /// Items of spilled lists copied (rows of their own).
    #[serde(default)]
    pub list_items: u64,
    /// Fields of spilled maps copied (rows of their own).
    #[serde(default)]
    pub map_fields: u64,
    /// Pending timers copied.
    pub timers: u64,
    /// Kept component files copied.
    pub components: u64,
    /// Size of the copied database, in bytes.
    pub bytes: u64,
    /// The input positions of the checkpoint copied: where a pipeline
    /// started on the copy resumes.
    pub sources: Vec<SnapshotSource>,
}

/// One input's position in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSource {
    /// The input, as the checkpoint names it (a file's absolute path).
    pub input: String,
    /// Lines read from the start of the input.
    pub lines: u64,
    /// Byte offset of the next unread line.
    pub offset: u64,
}

/// Why a snapshot was not made. The destination is left as it was found
/// (a directory the snapshot created is removed again).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The destination cannot take a snapshot (it exists and is not an
    /// empty directory, is not the user's, cannot be created).
    #[error("snapshot destination {dest}: {reason}")]
    Dest {
        /// The destination.
        dest: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the state or writing the copy failed.
    #[error("snapshot of {dir} into {dest}: {reason}")]
    Failed {
        /// The state directory.
        dir: PathBuf,
        /// The destination.
        dest: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The tables a snapshot copies: every table of the database must be one
/// of these, so a table added later cannot be left out silently.
const TABLES: [&str; 5] = ["state", "list_items", "map_fields", "timers", "meta"];

impl Store {
    /// Writes a consistent copy of the state directory into `dest`, a new
    /// directory (made 0700) or an empty one of the user's: the database
    /// as of the last checkpoint, and the kept components. A pipeline
    /// started with `--state dest` resumes from that checkpoint. Workers
    /// and checkpoints go on meanwhile (redb readers do not block its
    /// writer).
    pub fn snapshot(&self, dest: &Path) -> Result<SnapshotReport, SnapshotError> {
        let created = prepare_dest(dest)?;
        let done = self.copy_into(dest);
        if done.is_err() {
            // Leave the destination as it was found.
            match created {
                true => drop(std::fs::remove_dir_all(dest)),
                false => {
                    if let Ok(entries) = std::fs::read_dir(dest) {
                        for e in entries.flatten() {
                            let p = e.path();
                            let _ = match e.file_type().is_ok_and(|t| t.is_dir()) {
                                true => std::fs::remove_dir_all(&p),
                                false => std::fs::remove_file(&p),
                            };
                        }
                    }
                }
            }
        }
        done
    }

    /// Bytes of the state directory's own files now: the database and the
    /// kept components (what a snapshot copies; files that cannot be read
    /// count 0).
    pub fn size_bytes(&self) -> u64 {
        let len = |p: &Path| std::fs::symlink_metadata(p).map_or(0, |m| m.len());
        let components = std::fs::read_dir(self.dir.join(COMPONENTS_DIR))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| len(&e.path()))
                    .sum()
            })
            .unwrap_or(0);
        len(&self.dir.join(DB_FILE)) + components
    }

    fn copy_into(&self, dest: &Path) -> Result<SnapshotReport, SnapshotError> {
        let dir = &self.dir;
        let failed = |reason: String| SnapshotError::Failed {
            dir: dir.clone(),
            dest: dest.to_path_buf(),
            reason,
        };
        let io = |what: &str, e: std::io::Error| failed(format!("{what}: {e}"));
        let tmp = tempfile::Builder::new()
            .prefix(".state.redb.")
            .suffix(".new")
            .tempfile_in(dest)
            .map_err(|e| io("creating the database", e))?;
        let mut report = guard(dir, || self.copy_db(tmp.path()))
            .map_err(|e| failed(e.to_string()))?
            .map_err(failed)?;
        report.dest = dest.to_path_buf();
        let db_path = dest.join(DB_FILE);
        tmp.persist_noclobber(&db_path)
            .map_err(|e| io("linking state.redb into place", e.error))?;
        report.bytes = std::fs::metadata(&db_path)
            .map_err(|e| io("state.redb", e))?
            .len();
        report.components = self.copy_components(dest).map_err(failed)?;
        std::fs::File::open(dest)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory", e))?;
        Ok(report)
    }

    /// Copies every table, in one read transaction, into a new database at
    /// `path`. The outer error is the source's, the inner the copy's.
    fn copy_db(&self, path: &Path) -> Result<Result<SnapshotReport, String>, StoreError> {
        let dir = &self.dir;
        let txn = self.db().begin_read().map_err(|x| db_err(dir, x))?;
        let unknown: Vec<String> = txn
            .list_tables()
            .map_err(|x| db_err(dir, x))?
            .map(|t| t.name().to_string())
            .chain(
                txn.list_multimap_tables()
                    .map_err(|x| db_err(dir, x))?
                    .map(|t| t.name().to_string()),
            )
            .filter(|n| !TABLES.contains(&n.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Ok(Err(format!(
                "the database has tables this eddy does not know how to copy: {}",
                unknown.join(", ")
            )));
        }
        let out = match Database::builder().create(path) {
            Ok(db) => db,
            Err(err) => return Ok(Err(format!("creating the database: {err}"))),
        };
        let mut report = SnapshotReport {
            dest: PathBuf::new(),
            keys: 0,
            list_items: 0,
            map_fields: 0,
            timers: 0,
            components: 0,
            bytes: 0,
            sources: Vec::new(),
        };
        // Errors of the copy (the destination's database) are told apart
        // from those of the source.
        let w = match out.begin_write() {
            Ok(w) => w,
            Err(err) => return Ok(Err(format!("writing the database: {err}"))),
        };
        let copy = |err: redb::Error| format!("writing the database: {err}");
        {
            let src = txn.open_table(STATE).map_err(|x| db_err(dir, x))?;
            let mut dst = match w.open_table(STATE) {
                Ok(t) => t,
                Err(err) => return Ok(Err(copy(err.into()))),
            };
            for item in src.iter().map_err(|x| db_err(dir, x))? {
                let (k, v) = item.map_err(|x| db_err(dir, x))?;
                let (operator, key) = k.value();
                crate::state::check_record(v.value()).map_err(|c| StoreError::CorruptState {
                    dir: dir.clone(),
                    operator: operator.to_string(),
                    key: key.to_string(),
                    reason: c.0.to_string(),
                })?;
                if let Err(err) = dst.insert((operator, key), v.value()) {
                    return Ok(Err(copy(err.into())));
                }
                report.keys += 1;
            }
        }
        match txn.open_table(LIST_ITEMS) {
            Ok(src) => {
                let mut dst = match w.open_table(LIST_ITEMS) {
                    Ok(t) => t,
                    Err(err) => return Ok(Err(copy(err.into()))),
                };
                for item in src.iter().map_err(|x| db_err(dir, x))? {
                    let (k, v) = item.map_err(|x| db_err(dir, x))?;
                    let (operator, key, name, index) = k.value();
                    item_of(index, v.value()).map_err(|r| StoreError::CorruptState {
                        dir: dir.clone(),
                        operator: operator.to_string(),
                        key: key.to_string(),
                        reason: format!("list `{name}`: item {index}: {r}"),
                    })?;
                    if let Err(err) = dst.insert(k.value(), v.value()) {
                        return Ok(Err(copy(err.into())));
                    }
                    report.list_items += 1;
                }
            }
            // No list was ever spilled.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(db_err(dir, err)),
        }
        match txn.open_table(MAP_FIELDS) {
            Ok(src) => {
                let mut dst = match w.open_table(MAP_FIELDS) {
                    Ok(t) => t,
                    Err(err) => return Ok(Err(copy(err.into()))),
                };
                for item in src.iter().map_err(|x| db_err(dir, x))? {
                    let (k, v) = item.map_err(|x| db_err(dir, x))?;
                    let (operator, key, name, field) = k.value();
                    value_of(field, v.value()).map_err(|r| StoreError::CorruptState {
                        dir: dir.clone(),
                        operator: operator.to_string(),
                        key: key.to_string(),
                        reason: format!("map `{name}`: field {field:?}: {r}"),
                    })?;
                    if let Err(err) = dst.insert(k.value(), v.value()) {
                        return Ok(Err(copy(err.into())));
                    }
                    report.map_fields += 1;
                }
            }
            // No map was ever spilled.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(db_err(dir, err)),
        }
        match txn.open_table(TIMERS) {
            Ok(src) => {
                let mut dst = match w.open_table(TIMERS) {
                    Ok(t) => t,
                    Err(err) => return Ok(Err(copy(err.into()))),
                };
                for item in src.iter().map_err(|x| db_err(dir, x))? {
                    let (k, v) = item.map_err(|x| db_err(dir, x))?;
                    if let Err(err) = dst.insert(k.value(), v.value()) {
                        return Ok(Err(copy(err.into())));
                    }
                    report.timers += 1;
                }
            }
            // No timer was ever written.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(db_err(dir, err)),
        }
        {
            let src = txn.open_table(META).map_err(|x| db_err(dir, x))?;
            let mut dst = match w.open_table(META) {
                Ok(t) => t,
                Err(err) => return Ok(Err(copy(err.into()))),
            };
            for item in src.iter().map_err(|x| db_err(dir, x))? {
                let (k, v) = item.map_err(|x| db_err(dir, x))?;
                let (name, value) = (k.value(), v.value());
                if let Err(err) = dst.insert(name, value) {
                    return Ok(Err(copy(err.into())));
                }
                if let Some(input) = name.strip_prefix("source:") {
                    // As `source_pos` reads it, from this transaction.
                    let corrupt = |reason: &str| StoreError::CorruptMeta {
                        dir: dir.clone(),
                        name: name.to_string(),
                        reason: reason.to_string(),
                    };
                    let (pos, sum) = match value.len() {
                        20 => value.split_at(16),
                        n => return Err(corrupt(&format!("{n} bytes where 20 were expected"))),
                    };
                    if meta_sum(name, pos).to_le_bytes() != sum {
                        return Err(corrupt(
                            "checksum mismatch: the value was changed after it was written",
                        ));
                    }
                    report.sources.push(SnapshotSource {
                        input: input.to_string(),
                        offset: u64::from_le_bytes(pos[..8].try_into().unwrap()),
                        lines: u64::from_le_bytes(pos[8..].try_into().unwrap()),
                    });
                }
            }
        }
        if let Err(err) = w.commit() {
            return Ok(Err(copy(err.into())));
        }
        Ok(Ok(report))
    }

    /// Copies the kept components into `dest/components/` (0700, each file
    /// 0600, synced): the number copied.
    fn copy_components(&self, dest: &Path) -> Result<u64, String> {
        let from = self.dir.join(COMPONENTS_DIR);
        let entries = match std::fs::read_dir(&from) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", from.display())),
        };
        let to = dest.join(COMPONENTS_DIR);
        create_private_dir(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
            let name = entry.file_name();
            let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".wasm")) else {
                continue;
            };
            // Only kept versions (named by their content hash), not a
            // half-written temporary file.
            if !(hash.len() == VERSION_ID_LEN || is_short_version_id(hash))
                || !hash.bytes().all(|b| b.is_ascii_hexdigit())
            {
                continue;
            }
            let src = entry.path();
            let bytes = read_regular_file(&src, MAX_COMPONENT_BYTES, true)
                .map_err(|e| format!("{}: {e}", src.display()))?;
            let dst = to.join(&name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            n += 1;
        }
        std::fs::File::open(&to)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", to.display()))?;
        Ok(n)
    }
}

/// Makes `dest` ready for a snapshot: creates it (0700) when missing, or
/// accepts an empty directory of the user's that no one else may write.
/// Returns whether it was created.
fn prepare_dest(dest: &Path) -> Result<bool, SnapshotError> {
    let refuse = |reason: String| SnapshotError::Dest {
        dest: dest.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(dest).map_err(|e| refuse(format!("cannot create it: {e}")))?;
            Ok(true)
        }
        Err(e) => Err(refuse(e.to_string())),
        Ok(m) if !m.is_dir() => Err(refuse(format!(
            "{} is in the way; a snapshot goes into a new or empty directory",
            match m.is_file() {
                true => "a file",
                false => super::files::file_kind(m.file_type()),
            }
        ))),
        Ok(m) => {
            if let Some(reason) = unsafe_reason(&m) {
                return Err(refuse(format!(
                    "it {reason}; a snapshot holds compiled code's sources, so its directory must be yours and writable by no one else"
                )));
            }
            let n = std::fs::read_dir(dest)
                .map_err(|e| refuse(e.to_string()))?
                .count();
            match n {
                0 => Ok(false),
                n => Err(refuse(format!(
                    "it is not empty ({n} entr{}); a snapshot goes into a new or empty directory, so nothing is overwritten",
                    if n == 1 { "y" } else { "ies" }
                ))),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A record holding `count` under the state name `count`.
    pub(in crate::state::store) fn record(count: &str) -> Vec<u8> {
        let names: Vec<Box<str>> = vec!["count".into()];
        let mut e = crate::state::Entity::default();
        e.put(0, count.as_bytes());
        let mut r = Vec::new();
        e.encode(&names, &mut r);
        r
    }

    fn write(op: &str, key: &str, count: &str) -> StateWrite {
        StateWrite {
            operator: op.into(),
            key: key.into(),
            record: Some(record(count)),
            lists: Vec::new(),
            maps: Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_holds_one_checkpoint_whole_and_opens_as_a_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("st")).unwrap();
        let hash = component_hash(b"component");
        store.keep_component(&hash, b"component").unwrap();
        store
            .commit(&Checkpoint {
                writes: vec![
                    write("a", "k1", "1"),
                    write("a", "k2", "2"),
                    write("b", "k1", "3"),
                ]
                .into(),
                timers: vec![TimerWrite {
                    operator: "a".into(),
                    key: "k1".into(),
                    name: "t".into(),
                    at: Some(42),
                }],
                source: Some((
                    "/in".into(),
                    SourcePos {
                        offset: 100,
                        line: 7,
                    },
                )),
                sinks: vec![("/out".into(), 55)],
                meta: vec![("versions:a".into(), b"[]".to_vec())],
                ..Default::default()
            })
            .unwrap();
        let dest = tmp.path().join("snap/one");
        let report = store.snapshot(&dest).unwrap();
        assert_eq!(
            report,
            SnapshotReport {
                dest: dest.clone(),
                keys: 3,
                list_items: 0,
                map_fields: 0,
                timers: 1,
                components: 1,
                bytes: std::fs::metadata(dest.join(DB_FILE)).unwrap().len(),
                sources: vec![SnapshotSource {
                    input: "/in".into(),
                    lines: 7,
                    offset: 100,
                }],
            }
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), 0o700);
        assert_eq!(mode(&dest.join(COMPONENTS_DIR)), 0o700);
        // A later checkpoint does not change the copy.
        store
            .commit(&Checkpoint {
                writes: vec![write("a", "k1", "9")].into(),
                ..Default::default()
            })
            .unwrap();
        let copy = Store::open(&dest).unwrap();
        assert_eq!(copy.record("a", "k1").unwrap(), Some(record("1")));
        assert_eq!(copy.scan("a").unwrap().len(), 2);
        assert_eq!(copy.scan("b").unwrap(), [("k1".into(), record("3"))]);
        assert_eq!(copy.timers("a").unwrap(), [("k1".into(), "t".into(), 42)]);
        assert_eq!(
            copy.source_pos("/in").unwrap(),
            Some(SourcePos {
                offset: 100,
                line: 7
            })
        );
        assert_eq!(copy.sink_len("/out").unwrap(), Some(55));
        assert_eq!(copy.meta("versions:a").unwrap(), Some(b"[]".to_vec()));
        assert_eq!(copy.load_component(&hash).unwrap(), b"component");
    }

    #[test]
    fn a_snapshot_refuses_a_destination_in_use_and_leaves_it_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("st")).unwrap();
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"x").unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        for (dest, reason) in [
            (&full, "it is not empty (1 entry); a snapshot goes into a new or empty directory, so nothing is overwritten"),
            (&file, "a file is in the way; a snapshot goes into a new or empty directory"),
            (&open, "it is writable by its group and by other users (mode 777); a snapshot holds compiled code's sources, so its directory must be yours and writable by no one else"),
        ] {
            let e = store.snapshot(dest).unwrap_err();
            assert_eq!(
                e,
                SnapshotError::Dest {
                    dest: dest.clone(),
                    reason: reason.into()
                }
            );
        }
        assert_eq!(std::fs::read(full.join("x")).unwrap(), b"x");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");

        // An empty directory of the user's is taken as it is.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(store.snapshot(&empty).unwrap().keys, 0);
        assert!(Store::open(&empty).is_ok());
    }

    #[test]
    fn a_table_the_snapshot_does_not_know_stops_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("st")).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("cache"))
            .unwrap()
            .insert("x", 1)
            .unwrap();
        txn.commit().unwrap();
        let dest = tmp.path().join("snap");
        let e = store.snapshot(&dest).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "snapshot of {} into {}: the database has tables this eddy does not know how to copy: cache",
                tmp.path().join("st").display(),
                dest.display()
            )
        );
        assert!(!dest.exists(), "the directory it made is removed");
    }
}
