//! [`Loaded`]: an operator of the pipeline, compiled once and ready to be
//! instantiated on each worker.

use std::sync::Arc;

use super::wasm::{Compiled, ComponentError, InitError, WasmComponent, WasmWindow};
use super::{OpCtx, Operator, WindowOperator};
use crate::config::{Limits, Pipeline, TtlSpec, WindowKind};
use crate::state::{Reader, StoreError};

/// Builds a native operator for a worker.
pub type NativeFactory = Arc<dyn Fn(OpCtx) -> Box<dyn Operator> + Send + Sync>;

/// How to make an operator's instances.
#[derive(Clone)]
pub enum OperatorKind {
    /// A component, compiled once, instantiated per worker.
    Wasm(Arc<WasmComponent>),
    /// Native Rust code (the benchmark baseline).
    Native(NativeFactory),
    /// Windows kept by the host ([`WindowOperator`]) over a window
    /// aggregate component, instantiated per worker.
    Window(Arc<WasmWindow>, WindowKind),
}

impl OperatorKind {
    /// The component that runs, for a component (`None`: native code).
    pub fn component(&self) -> Option<ComponentRef<'_>> {
        match self {
            OperatorKind::Wasm(c) => Some(ComponentRef {
                hash: c.hash(),
                path: c.path(),
                bytes: c.bytes(),
                engine: c.engine(),
            }),
            OperatorKind::Native(_) => None,
            OperatorKind::Window(w, _) => Some(ComponentRef {
                hash: w.hash(),
                path: w.path(),
                bytes: w.bytes(),
                engine: w.engine(),
            }),
        }
    }

    /// The same kind of operator (a component, or a window of the same
    /// kind) over the component `bytes` read from `path`, compiled for
    /// `engine`; `operator` names it in errors.
    pub fn with_component(
        &self,
        engine: &wasmtime::Engine,
        path: &std::path::Path,
        bytes: &[u8],
        operator: &str,
    ) -> Result<OperatorKind, ComponentError> {
        Ok(match self {
            OperatorKind::Window(_, kind) => OperatorKind::Window(
                Arc::new(WasmWindow::from_bytes(
                    engine,
                    path,
                    bytes,
                    operator,
                    "eddy swap",
                )?),
                *kind,
            ),
            _ => OperatorKind::Wasm(Arc::new(WasmComponent::from_bytes(engine, path, bytes)?)),
        })
    }

    /// Whether its component exports the migration hook.
    pub fn migrates(&self) -> bool {
        matches!(self, OperatorKind::Wasm(c) if c.migrates())
    }

    /// Whether it handles timers (a window operator always does: its
    /// windows are timers).
    pub fn handles_timers(&self) -> bool {
        match self {
            OperatorKind::Wasm(c) => c.handles_timers(),
            OperatorKind::Native(_) => true,
            OperatorKind::Window(..) => true,
        }
    }
}

/// The component of an operator: what identifies it and what makes it
/// again.
#[derive(Clone, Copy)]
pub struct ComponentRef<'a> {
    /// Content hash of its bytes.
    pub hash: &'a str,
    /// Where it was loaded from.
    pub path: &'a std::path::Path,
    /// Its bytes.
    pub bytes: &'a [u8],
    /// The engine it was compiled for.
    pub engine: &'a wasmtime::Engine,
}

/// A [`WindowOperator`] of `kind` over `agg`.
pub fn window_operator<A: super::Aggregate + 'static>(
    ctx: OpCtx,
    agg: A,
    kind: WindowKind,
) -> Box<dyn Operator> {
    match kind {
        WindowKind::Tumbling { size } => Box::new(WindowOperator::tumbling(ctx, agg, size)),
        WindowKind::Hopping { size, slide } => {
            Box::new(WindowOperator::hopping(ctx, agg, size, slide))
        }
        WindowKind::Session { gap } => Box::new(WindowOperator::session(ctx, agg, gap)),
    }
}

/// An operator ready to be instantiated on each worker.
#[derive(Clone)]
pub struct Loaded {
    /// The operator's name: its state name space.
    pub name: Arc<str>,
    /// How to make its instances.
    pub kind: OperatorKind,
    /// Config JSON text for `init`.
    pub config: String,
    /// What the host allows it.
    pub limits: Limits,
    /// Generation of the version that runs (set from the state directory
    /// when the pipeline starts; see `crate::swap::resolve`).
    pub generation: u32,
    /// Content hash of each generation, for `migrate`.
    pub history: Arc<Vec<String>>,
    /// State names given a time to live.
    pub ttl: Vec<TtlSpec>,
}

/// Why an operator could not be instantiated on a worker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The instance could not be made or refused its config.
    #[error(transparent)]
    Init(#[from] InitError),
}

impl Loaded {
    /// One instance for a worker, loading uncached keys from `reader`.
    pub fn instantiate(&self, reader: Option<Reader>) -> Result<Box<dyn Operator>, StartError> {
        let mut ctx = OpCtx::new(self.name.clone(), reader, self.limits);
        ctx.set_generation(self.generation);
        ctx.set_ttl(&self.ttl);
        Ok(match &self.kind {
            OperatorKind::Wasm(component) => {
                let mut inst = component.instantiate(ctx, &self.config)?;
                inst.set_history(self.history.clone());
                Box::new(inst)
            }
            OperatorKind::Native(f) => f(ctx),
            OperatorKind::Window(window, kind) => {
                let agg = window.instantiate(&self.name, self.limits, &self.config)?;
                window_operator(ctx, agg, *kind)
            }
        })
    }
}

/// Compiles every operator of the pipeline (once, shared by all workers).
pub fn load_operators(
    engine: &wasmtime::Engine,
    p: &Pipeline,
) -> Result<Vec<Loaded>, ComponentError> {
    // Operators whose CPU limit is off (trusted code) share an engine
    // without the interruption checks; a swap keeps a component's engine.
    let mut unlimited: Option<wasmtime::Engine> = None;
    p.operators
        .iter()
        .map(|spec| {
            let engine = match spec.limits.cpu_limit {
                true => engine,
                false => match &mut unlimited {
                    Some(e) => &*e,
                    None => &*unlimited.insert(super::wasm::engine_with(false).map_err(|e| {
                        ComponentError::Invalid {
                            path: spec.component.clone(),
                            reason: format!("cannot make an engine without the CPU limit: {e:#}"),
                        }
                    })?),
                },
            };
            if !spec.limits.cpu_limit {
                tracing::info!(
                    "operator `{}`: cpu_limit = false: its calls are not interrupted (trusted code only)",
                    spec.name
                );
            }
            let t = std::time::Instant::now();
            if let Some(w) = &spec.window {
                let at = format!("pipeline file {}, line {}", w.file.display(), w.line);
                let window = WasmWindow::load(engine, &spec.component, &spec.name, &at)?;
                tracing::debug!(
                    "operator `{}`: window aggregate {} loaded in {:.0} ms",
                    spec.name,
                    spec.component.display(),
                    t.elapsed().as_secs_f64() * 1e3
                );
                return Ok(Loaded {
                    name: spec.name.as_str().into(),
                    kind: OperatorKind::Window(Arc::new(window), w.kind),
                    config: spec.config.to_string(),
                    limits: spec.limits,
                    generation: 0,
                    history: Arc::default(),
                    ttl: spec.ttl.clone(),
                });
            }
            let component = WasmComponent::load(engine, &spec.component)?;
            let took = t.elapsed();
            let (how, slow) = match component.compiled() {
                Compiled::Cached => ("loaded from the compile cache", false),
                Compiled::Fresh => ("compiled", took.as_secs() >= 1),
            };
            let msg = format!(
                "operator `{}`: {} ({} bytes) {how} in {:.0} ms",
                spec.name,
                spec.component.display(),
                component.bytes().len(),
                took.as_secs_f64() * 1e3
            );
            // A slow compile is worth a line (the next start uses the cache).
            if slow {
                tracing::info!("{msg}; later starts load it from the compile cache");
            } else {
                tracing::debug!("{msg}");
            }
            Ok(Loaded {
                name: spec.name.as_str().into(),
                kind: OperatorKind::Wasm(Arc::new(component)),
                config: spec.config.to_string(),
                limits: spec.limits,
                generation: 0,
                history: Arc::default(),
                ttl: spec.ttl.clone(),
            })
        })
        .collect()
}
