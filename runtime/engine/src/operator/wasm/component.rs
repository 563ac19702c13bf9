//! [`WasmComponent`]: a component read, compiled (or loaded from the compile
//! cache) and type-checked against the operator world, once; workers
//! instantiate it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use wasmtime::Engine;

use super::cache::{self, Cache, Compiled};
use super::engine::linker;
use super::instance::{new_store, InitError};
use super::{HostData, WasmOperator};
use crate::operator::host::OpCtx;
use crate::operator::wasm::bindings::OperatorPre;

/// The contract version this runtime implements (`wit/world.wit`).
pub const CONTRACT: &str = "eddy:operator@0.3.0";

/// Why a component could not be loaded.
#[derive(Debug, Error)]
pub enum ComponentError {
    #[error("component {path}: cannot read the file: {error}")]
    /// The file could not be read.
    Read {
        /// The file it names.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error(
        "component {path}: not a WebAssembly file (it does not start with the `\\0asm` magic bytes)"
    )]
    /// Not a WebAssembly file.
    NotWasm {
        /// The file it names.
        path: PathBuf,
    },
    #[error("component {path}: a core WebAssembly module, not a component; build it for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)")]
    /// A core module, not a component.
    CoreModule {
        /// The file it names.
        path: PathBuf,
    },
    #[error("component {path}: invalid component: {reason}")]
    /// A setting is invalid (the message says which).
    Invalid {
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    #[error("component {path}: built against {found}, but this eddy implements {CONTRACT} (and still loads 0.1.0 and 0.2.0): build it again from its source with this eddy (`eddy build`, or the eddy-sdk crate of this release for Rust)")]
    /// Built against another version of the contract.
    Version {
        /// The file it names.
        path: PathBuf,
        /// What was found instead.
        found: String,
    },
    #[error("{at}: operator `{operator}`: window: component {path} does not export the window aggregate (world `{CONTRACT}/window-operator`): it lacks {missing}")]
    /// An operator declared a window whose component is not a window
    /// aggregate.
    NotWindow {
        /// The file it names.
        path: PathBuf,
        /// The operator.
        operator: String,
        /// Where its `window` setting is: `pipeline file F, line N`.
        at: String,
        /// The exports it lacks, quoted.
        missing: String,
    },
    #[error("component {path}: not an eddy operator (world `{CONTRACT}/operator`): {reason}")]
    /// Not an operator component.
    WrongWorld {
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A component compiled and type-checked against the operator world.
pub struct WasmComponent {
    pub(super) path: PathBuf,
    /// Content hash (version id): the SHA-256 of the bytes, 64 hex digits.
    /// Identifies a version in logs and status, and names its copy in the
    /// state directory, which is checked against it when read back.
    pub(super) hash: String,
    pub(super) engine: Engine,
    /// The component's bytes, kept in the state directory when it runs.
    pub(super) bytes: Arc<[u8]>,
    pub(super) pre: OperatorPre<HostData>,
    /// The component exports `handle-batch` (the batched fast path).
    pub(super) batched: bool,
    /// The component exports `migrate` (the migration hook).
    pub(super) migrates: bool,
    /// The component exports `on-timer` (the timer handler).
    pub(super) on_timer: bool,
    /// Compiled now or loaded from the cache.
    pub(super) compiled: Compiled,
}

impl WasmComponent {
    /// Reads, compiles and type-checks the component at `path`.
    ///
    /// Only a regular file is read, at most
    /// [`MAX_COMPONENT_BYTES`](crate::state::MAX_COMPONENT_BYTES): a FIFO,
    /// a device or a directory is refused at once (it is opened without
    /// blocking and checked with `fstat`), never read until it ends.
    pub fn load(engine: &Engine, path: &Path) -> Result<WasmComponent, ComponentError> {
        let bytes = crate::state::read_regular_file(path, crate::state::MAX_COMPONENT_BYTES, false)
            .map_err(|error| ComponentError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Compiles and type-checks component `bytes` (named `path` in errors).
    ///
    /// Compiled code comes from the cache named by the environment
    /// ([`Cache::from_env`]) when it has this component.
    pub fn from_bytes(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<WasmComponent, ComponentError> {
        Self::from_bytes_cached(engine, path, bytes, Cache::from_env().as_ref())
    }

    /// [`WasmComponent::from_bytes`] with an explicit cache (`None`: always
    /// compile).
    pub fn from_bytes_cached(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        cache: Option<&Cache>,
    ) -> Result<WasmComponent, ComponentError> {
        let checked = check(engine, path, bytes, cache)?;
        let Checked {
            path,
            hash,
            pre,
            exports,
            frame_batch,
            compiled,
        } = checked;
        let has = |name: &str| exports.iter().any(|e| e == name);
        if !has("handle") && has("add") && has("finish") {
            return Err(ComponentError::WrongWorld {
                path,
                reason: format!(
                    "it is a window aggregate (world `{CONTRACT}/window-operator`): declare its operator a window in the pipeline file, e.g. `window = {{ kind = \"tumbling\", size = 60000 }}`"
                ),
            });
        }
        let pre = OperatorPre::new(pre).map_err(|e| ComponentError::WrongWorld {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        // 0.1.0's `handle-batch` takes another type: unused.
        let batched = !frame_batch && has("handle-batch");
        let migrates = has("migrate");
        let on_timer = has("on-timer");
        Ok(WasmComponent {
            path,
            hash,
            engine: engine.clone(),
            bytes: bytes.into(),
            pre,
            batched,
            migrates,
            on_timer,
            compiled,
        })
    }
}

/// A component compiled, of this contract's version (or one it still
/// loads), and linked against the host's imports.
pub(super) struct Checked {
    /// Where it was read from.
    pub(super) path: PathBuf,
    /// Its content hash.
    pub(super) hash: String,
    /// Linked, not yet instantiated.
    pub(super) pre: wasmtime::component::InstancePre<HostData>,
    /// The names of its exports.
    pub(super) exports: Vec<String>,
    /// It was built for 0.1.0 (`handle-batch` of another type).
    pub(super) frame_batch: bool,
    /// Compiled now or loaded from the cache.
    pub(super) compiled: Compiled,
}

/// Compiles component `bytes` (named `path` in errors), checks its
/// contract version and links it.
pub(super) fn check(
    engine: &Engine,
    path: &Path,
    bytes: &[u8],
    cache: Option<&Cache>,
) -> Result<Checked, ComponentError> {
    {
        let path = path.to_path_buf();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ComponentError::NotWasm { path });
        }
        // Core modules have version 1 and layer 0; components layer 1.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(ComponentError::CoreModule { path });
        }
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
        let (component, compiled) =
            cache::compile_digest(cache, engine, bytes, &digest).map_err(|e| {
                ComponentError::Invalid {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                }
            })?;
        // A component built against another version of the contract imports
        // `eddy:operator/...@<other>`: say so rather than "missing import".
        // One built for an earlier contract is linked under the old names
        // (`legacy`); 0.1.0's `handle-batch` is of another type.
        let ty = component.component_type();
        let mut frame_batch = false;
        for (name, _) in ty.imports(engine) {
            if let Some(rest) = name.strip_prefix("eddy:operator/") {
                if let Some((_, version)) = rest.split_once('@') {
                    let found = format!("eddy:operator@{version}");
                    if found == super::legacy::FRAME_BATCH {
                        frame_batch = true;
                    } else if found != CONTRACT && !super::EARLIER.contains(&found.as_str()) {
                        return Err(ComponentError::Version { path, found });
                    }
                }
            }
        }
        let linker = linker(engine).map_err(|e| ComponentError::Invalid {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| ComponentError::WrongWorld {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
        let hash = crate::state::component_hash_of(&digest);
        let exports = ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Checked {
            path,
            hash,
            pre,
            exports,
            frame_batch,
            compiled,
        })
    }
}

impl WasmComponent {
    /// Whether the compiled code came from the cache.
    pub fn compiled(&self) -> Compiled {
        self.compiled
    }

    /// Where the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The component's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The engine it was compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the component exports the migration hook.
    pub fn migrates(&self) -> bool {
        self.migrates
    }

    /// Whether the component exports `on-timer` (the timer handler).
    pub fn handles_timers(&self) -> bool {
        self.on_timer
    }

    /// Whether the component exports `handle-batch` (the batched fast path).
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// Instantiates the operator and calls `init(config)`.
    pub fn instantiate(
        self: &Arc<Self>,
        ctx: OpCtx,
        config: &str,
    ) -> Result<WasmOperator, InitError> {
        let mut op = WasmOperator {
            component: self.clone(),
            config: config.to_string(),
            store: new_store(self, ctx),
            live: None,
            batch_off: false,
            batched_events: 0,
            logged_last_batch: false,
            span_stop: None,
            span_again: false,
            span_off: false,
            frames: Default::default(),
            history: Arc::default(),
            failed_starts: 0,
            last_start_error: None,
        };
        op.start()?;
        Ok(op)
    }
}
