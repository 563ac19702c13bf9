//! The versions of each operator that ran on a state directory, and which
//! one runs when a pipeline (re)starts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::operator::{Loaded, OperatorKind, Plugin};
use crate::state::{legacy_component_hash, Store, StoreError};

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
    let OperatorKind::Wasm(plugin) = &op.kind else {
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
    let plugin = plugin.clone();
    let hash = plugin.hash().to_string();
    let source = plugin.path().display().to_string();
    store.keep_component(&hash, plugin.bytes())?;
    let mut recorded: Option<Versions> = store.meta_json(&Versions::meta_name(&op.name))?;
    let mut renamed = false;
    if let Some(v) = &mut recorded {
        renamed = adopt_legacy_names(v, plugin.bytes(), &hash);
        if renamed {
            tracing::info!(
                operator = %op.name,
                "the state directory named this component by the hash of an earlier eddy; it is now {hash}"
            );
        }
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
                    Ok(b) => {
                        Plugin::from_bytes(plugin.engine(), &path, &b).map_err(|e| e.to_string())
                    }
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
                    plugin.path().display()
                );
                op.kind = OperatorKind::Wasm(Arc::new(swapped));
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
        let mut v = Versions {
            active: 2,
            base: legacy.clone(),
            all: vec![
                version(0, &legacy),
                version(1, "0123456789abcdef"),
                version(2, &legacy),
            ],
        };
        assert!(adopt_legacy_names(&mut v, bytes, "feedfacecafebeef"));
        assert_eq!(v.base, "feedfacecafebeef");
        let hashes: Vec<&str> = v.all.iter().map(|v| v.hash.as_str()).collect();
        assert_eq!(
            hashes,
            ["feedfacecafebeef", "0123456789abcdef", "feedfacecafebeef"]
        );
        // Nothing to rename the second time.
        assert!(!adopt_legacy_names(&mut v, bytes, "feedfacecafebeef"));
    }
}
