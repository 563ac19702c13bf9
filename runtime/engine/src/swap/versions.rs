//! The versions of each operator that ran on a state directory, and which
//! one runs when a pipeline (re)starts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::operator::Loaded;
use crate::state::{component_hash, is_short_version_id, legacy_component_hash, Store, StoreError};

/// Why the version a state directory runs cannot be put back in service.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Reading or writing the state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The version a swap put in service cannot be loaded from its kept
    /// copy.
    #[error("operator `{operator}`: the state directory {dir} runs version {hash} (swapped in from {source_path}), but it cannot be loaded: {reason}")]
    Unloadable {
        /// The operator.
        operator: String,
        /// The state directory.
        dir: String,
        /// The version's content hash.
        hash: String,
        /// Where it was swapped in from.
        source_path: String,
        /// Why it cannot be loaded.
        reason: String,
    },
}

/// One version of an operator that ran on this state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number: 0 for the first, then one more per swap or rollback.
    pub generation: u32,
    /// Content hash of the component (`native` for a native operator).
    pub hash: String,
    /// Where the component was loaded from.
    pub source: String,
    /// When it was put in service, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
}

/// The versions of one operator, kept in the state directory's metadata
/// (`versions:<operator>`) and written with each checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Generation running now.
    pub active: u32,
    /// Content hash of the pipeline's own component when `active` was put
    /// in service. While the pipeline still names that component, a restart
    /// runs `active`; when it names another, that one is a new version.
    pub base: String,
    /// Every version, indexed by generation.
    pub all: Vec<Version>,
}

impl Versions {
    /// The running version.
    pub fn current(&self) -> &Version {
        &self.all[self.active as usize]
    }

    /// Content hash of each generation, for `migrate`'s `previous`.
    pub fn history(&self) -> Arc<Vec<String>> {
        Arc::new(self.all.iter().map(|v| v.hash.clone()).collect())
    }

    /// Name of the metadata entry holding `operator`'s versions.
    pub fn meta_name(operator: &str) -> String {
        format!("versions:{operator}")
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides which version of `op` runs on `store` (see [`Versions::base`]),
/// loading it from the state directory when a swap put another one in
/// service, and sets `op`'s generation and history. Returns the versions
/// and whether they changed (so the next checkpoint writes them).
pub fn resolve(store: &Store, op: &mut Loaded) -> Result<(Versions, bool), ResolveError> {
    let Some(component) = op.kind.component() else {
        let v = Version {
            generation: 0,
            hash: "native".into(),
            source: "native".into(),
            loaded_at_ms: now_ms(),
        };
        return Ok((
            Versions {
                active: 0,
                base: v.hash.clone(),
                all: vec![v],
            },
            false,
        ));
    };
    let hash = component.hash.to_string();
    let source = component.path.display().to_string();
    let pipeline_path = component.path.to_path_buf();
    let bytes = component.bytes;
    let engine = component.engine.clone();
    store.keep_component(&hash, bytes)?;
    let mut recorded: Option<Versions> = store.meta_json(&Versions::meta_name(&op.name))?;
    let mut renamed = false;
    if let Some(v) = &mut recorded {
        renamed = adopt_legacy_names(v, bytes, &hash);
        if renamed {
            tracing::info!(
                operator = %op.name,
                "the state directory named this component by the hash of an earlier eddy; it is now {hash}"
            );
        }
        renamed |= adopt_short_names(v, |short| full_id(store, &op.name, short, &hash));
    }
    let (versions, changed) = match recorded {
        None => (
            Versions {
                active: 0,
                base: hash.clone(),
                all: vec![Version {
                    generation: 0,
                    hash,
                    source,
                    loaded_at_ms: now_ms(),
                }],
            },
            true,
        ),
        Some(v) if v.base == hash && (v.active as usize) < v.all.len() => {
            let current = v.current();
            if current.hash != hash {
                let path = store.component_path(&current.hash);
                // Checked against its content hash before it runs.
                let loaded = match store.load_component(&current.hash) {
                    Ok(b) => op
                        .kind
                        .with_component(&engine, &path, &b, &op.name)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let swapped = loaded.map_err(|reason| ResolveError::Unloadable {
                    operator: op.name.to_string(),
                    dir: store.dir().display().to_string(),
                    hash: current.hash.clone(),
                    source_path: current.source.clone(),
                    reason,
                })?;
                tracing::info!(
                    operator = %op.name,
                    "running version {} (generation {}, swapped in from {}), not the pipeline's {}",
                    current.hash,
                    current.generation,
                    current.source,
                    pipeline_path.display()
                );
                op.kind = swapped;
            }
            (v, renamed)
        }
        Some(mut v) if (v.active as usize) < v.all.len() && v.current().hash == hash => {
            // The pipeline now names the version that runs (one swapped in
            // earlier): the same version, not a new one.
            v.base = hash;
            (v, true)
        }
        Some(mut v) => {
            // The pipeline names another component than when the running
            // version was chosen: a new deployment, a new version.
            let generation = v.all.len() as u32;
            tracing::info!(
                operator = %op.name,
                "the pipeline's component changed to {hash} ({source}): generation {generation}; keys written by earlier versions migrate on first touch"
            );
            v.all.push(Version {
                generation,
                hash: hash.clone(),
                source,
                loaded_at_ms: now_ms(),
            });
            v.active = generation;
            v.base = hash;
            (v, true)
        }
    };
    op.generation = versions.active;
    op.history = versions.history();
    Ok((versions, changed))
}

/// Renames, in `v`, the versions an earlier eddy named by the 64-bit
/// FxHash of `bytes` to `hash` (their SHA-256 name): the pipeline's own
/// component keeps its versions and generation across the upgrade, so its
/// keys need no migration. Returns whether anything was renamed. (A
/// version swapped in under an old name cannot be verified and is not
/// loaded: its kept file is refused by [`Store::load_component`].)
fn adopt_legacy_names(v: &mut Versions, bytes: &[u8], hash: &str) -> bool {
    let legacy = legacy_component_hash(bytes);
    let mut renamed = false;
    if v.base == legacy {
        v.base = hash.to_string();
        renamed = true;
    }
    for version in &mut v.all {
        if version.hash == legacy {
            version.hash = hash.to_string();
            renamed = true;
        }
    }
    renamed
}

/// Renames, in `v`, the versions (and the base) an older eddy recorded
/// under a short id (16 hex digits) to their full id, as `full_id` finds
/// it (`None`: left as recorded). Returns whether anything was renamed.
fn adopt_short_names(v: &mut Versions, mut full_id: impl FnMut(&str) -> Option<String>) -> bool {
    let mut found: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut renamed = false;
    for name in std::iter::once(&mut v.base).chain(v.all.iter_mut().map(|v| &mut v.hash)) {
        if !is_short_version_id(name) {
            continue;
        }
        let full = found
            .entry(name.clone())
            .or_insert_with(|| full_id(name))
            .clone();
        if let Some(full) = full {
            *name = full;
            renamed = true;
        }
    }
    renamed
}

/// The full id of the version an older eddy recorded as `short` for
/// `operator`: `pipeline` (the full id of the pipeline's component) when
/// it starts with `short`; else that of the kept copy, when its SHA-256
/// starts with `short` ([`Store::load_component`]), which is then kept
/// under its full id too (durably, before a checkpoint can record the new
/// name; the file under the short name stays). `None` when the copy
/// cannot be verified: the version keeps its short id, and loading it
/// says why it cannot run.
fn full_id(store: &Store, operator: &str, short: &str, pipeline: &str) -> Option<String> {
    if pipeline.starts_with(short) {
        tracing::info!(
            operator,
            "version {short} (recorded by an older eddy) is now {pipeline}"
        );
        return Some(pipeline.to_string());
    }
    let adopted = store.load_component(short).and_then(|bytes| {
        let full = component_hash(&bytes);
        store.keep_component(&full, &bytes)?;
        Ok(full)
    });
    match adopted {
        Ok(full) => {
            tracing::info!(
                operator,
                "version {short} (recorded by an older eddy) is now {full}"
            );
            Some(full)
        }
        Err(e) => {
            tracing::warn!(
                operator,
                "version {short} (recorded by an older eddy) keeps that id: {e}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(generation: u32, hash: &str) -> Version {
        Version {
            generation,
            hash: hash.into(),
            source: "x.wasm".into(),
            loaded_at_ms: 0,
        }
    }

    #[test]
    fn versions_named_by_an_earlier_eddy_are_renamed_to_their_sha256() {
        let bytes = b"the component";
        let legacy = legacy_component_hash(bytes);
        let hash = component_hash(bytes);
        let other = component_hash(b"another component");
        let mut v = Versions {
            active: 2,
            base: legacy.clone(),
            all: vec![version(0, &legacy), version(1, &other), version(2, &legacy)],
        };
        assert!(adopt_legacy_names(&mut v, bytes, &hash));
        assert_eq!(v.base, hash);
        let hashes: Vec<&str> = v.all.iter().map(|v| v.hash.as_str()).collect();
        assert_eq!(hashes, [&hash, &other, &hash]);
        // Nothing to rename the second time.
        assert!(!adopt_legacy_names(&mut v, bytes, &hash));
    }

    #[test]
    fn short_ids_are_replaced_by_the_full_id_found_once_per_name() {
        let a = component_hash(b"a");
        let b = component_hash(b"b");
        let c = component_hash(b"c");
        let lost = "0123456789abcdef";
        let mut v = Versions {
            active: 3,
            base: a[..16].to_string(),
            all: vec![
                version(0, &a[..16]),
                version(1, &b[..16]),
                version(2, lost),
                version(3, &a[..16]),
                version(4, &c),
                version(5, "native"),
            ],
        };
        let mut asked = Vec::new();
        let renamed = adopt_short_names(&mut v, |short| {
            asked.push(short.to_string());
            [&a, &b].into_iter().find(|f| f.starts_with(short)).cloned()
        });
        assert!(renamed);
        // Each short id is looked up once; full ids and `native` never.
        assert_eq!(asked, [&a[..16], &b[..16], lost]);
        assert_eq!(v.base, a);
        let hashes: Vec<&str> = v.all.iter().map(|v| v.hash.as_str()).collect();
        assert_eq!(hashes, [&a, &b, lost, &a, &c, "native"]);
        // What cannot be found keeps its short id; nothing else to do.
        assert!(!adopt_short_names(&mut v, |_| None));
        assert_eq!(v.all[2].hash, lost);
    }

    #[test]
    fn a_short_id_is_adopted_only_when_the_kept_bytes_match_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bytes = b"\0asm kept by an older eddy".to_vec();
        let full = component_hash(&bytes);
        let short = &full[..16];
        let pipeline = component_hash(b"\0asm the pipeline's component");
        // The pipeline's own component: by its id, no file needed.
        assert_eq!(
            full_id(&store, "op", &pipeline[..16], &pipeline).as_deref(),
            Some(pipeline.as_str())
        );
        // Kept under its short name, as an older eddy did: adopted, and
        // kept under its full name too; the old file stays.
        store.keep_component(short, &bytes).unwrap();
        assert_eq!(full_id(&store, "op", short, &pipeline), Some(full.clone()));
        assert_eq!(store.load_component(&full).unwrap(), bytes);
        assert_eq!(std::fs::read(store.component_path(short)).unwrap(), bytes);
        // Damaged, missing, or named by the unverifiable FxHash: kept as is.
        std::fs::write(store.component_path(short), b"\0asm damaged").unwrap();
        assert_eq!(full_id(&store, "op", short, &pipeline), None);
        std::fs::remove_file(store.component_path(short)).unwrap();
        assert_eq!(full_id(&store, "op", short, &pipeline), None);
        let legacy = legacy_component_hash(&bytes);
        store.keep_component(&legacy, &bytes).unwrap();
        assert_eq!(full_id(&store, "op", &legacy, &pipeline), None);
    }
}
