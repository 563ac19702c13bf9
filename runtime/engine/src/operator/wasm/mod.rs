//! Operators compiled to WebAssembly components.
//!
//! A [`WasmComponent`] is a component compiled and type-checked once (to an
//! `InstancePre`); each worker makes a [`WasmOperator`] from it: its own
//! `Store` and instance. Operators get no file system, network, environment
//! or clock: WASI is linked only so that components built by ordinary
//! toolchains instantiate, and its context grants nothing.
//!
//! # Clocks and randomness
//!
//! Both clocks of `wasi:clocks` are stopped at zero: an operator's only
//! time is its events' time. `wasi:random` is deterministic, so that the
//! same input gives the same outputs with any number of workers and a
//! replay after a crash rebuilds exactly the same state:
//!
//! - while an event is handled (`handle`), `random` and `insecure` draw
//!   from a generator seeded with the operator's name, the event's key, its
//!   input line, and how many earlier events of that key and line drew
//!   numbers at this operator (events a previous operator emitted from one
//!   line get different numbers);
//! - during instantiation and `init`, from one seeded with the operator's
//!   name; during `migrate`, with the operator's name and the key;
//! - `insecure-seed` (what Rust's `HashMap` seeds its hasher from) returns
//!   a value fixed per operator name, whenever it is called;
//! - inside a `handle-batch` call the host cannot tell the events apart:
//!   the first draw traps, the batch is replayed event by event on a fresh
//!   instance, and that instance stays on the per-event path. An operator
//!   that never draws numbers (the Rust SDK itself never does) keeps the
//!   batched path.
//!
//! The numbers are pseudo-random (SplitMix64), not secret: an operator must
//! not use them for keys or tokens.
//!
//! # Layout
//!
//! - [`engine`]: the shared wasmtime engine (CPU budget by epochs), the
//!   sandbox (WASI that grants nothing, stopped clocks, memory cap) and the
//!   linker.
//! - [`component`]: [`WasmComponent`], a component compiled and type-checked once.
//! - [`instance`]: [`WasmOperator`], one instance per worker: start,
//!   replacement after a trap, migration, the per-event path.
//! - [`batch`]: the `handle-batch` frame: built from the events and their
//!   keys' state, and its result parsed and applied.
//! - [`random`]: the deterministic `wasi:random`.
//! - [`window`]: window aggregate components ([`WasmWindow`], world
//!   `window-operator`) and their instances ([`WasmAggregate`]).
//! - [`cache`]: the compile cache.
//! - [`bindings`]: the host bindings of `wit/`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::WasiCtx;

use crate::operator::host::OpCtx;
use crate::operator::wasm::bindings::Operator as OperatorWorld;

mod batch;
pub(crate) mod bindings;
mod cache;
mod component;
mod engine;
mod instance;
mod legacy;
mod random;
pub mod testing;
mod window;

pub use cache::{Cache, CacheError, Compiled};

pub use component::{ComponentError, WasmComponent, CONTRACT};
pub use engine::{engine, engine_with};
pub use instance::InitError;
pub use legacy::EARLIER;
pub use window::{WasmAggregate, WasmWindow};

use batch::{BatchFn, HostBatch};
use engine::MemoryCap;
use random::Random;

/// The migration hook (`migrate` of world `migrating-operator`), when the
/// component exports it.
type MigrateFn = wasmtime::component::TypedFunc<(String,), (Result<(), String>,)>;

/// The timer handler (`on-timer` of world `timer-operator`): key, name,
/// time.
type OnTimerFn =
    wasmtime::component::TypedFunc<(&'static str, &'static str, i64), (Result<(), String>,)>;

/// Store data of one operator instance.
pub struct HostData {
    ctx: OpCtx,
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    /// What the guest wrote to stderr (a Rust panic message, say), quoted
    /// in the dead letter when it traps.
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    /// Deterministic `wasi:random` (see the module docs).
    random: Random,
}

/// One instance of a Wasm operator, owned by a worker.
pub struct WasmOperator {
    component: Arc<WasmComponent>,
    /// The config JSON, kept to re-`init` a replacement instance.
    config: String,
    /// The store of the current instance. Its data holds the operator's
    /// context (the worker's state cache, with writes not yet committed),
    /// which moves to each replacement's store and is never dropped with a
    /// failed instance.
    store: Store<HostData>,
    /// The running instance; `None` when the last start failed.
    live: Option<Live>,
    /// The guest asked for the per-event path (it uses map or list state,
    /// or randomness).
    batch_off: bool,
    /// Events whose outcome came from a `handle-batch` result.
    batched_events: u64,
    /// The last `handle-batch` call logged (so it was replayed per event):
    /// a second one in a row turns the batched path off.
    logged_last_batch: bool,
    /// In a run handed over by [`Operator::handle_span`]: where, in the
    /// current frame, the events stopped that need the per-event path.
    span_stop: Option<usize>,
    /// A span just stopped: the next run is not to span advances (it is
    /// handed over split at them), until a `handle_many` call ends.
    span_again: bool,
    /// A batch read the watermark in a span: this operator's runs no
    /// longer span advances.
    span_off: bool,
    /// The `handle-batch` batch, its buffers kept from call to call.
    frames: HostBatch,
    /// Content hash of each generation of this operator (index: generation),
    /// handed to `migrate` as the previous version's identity.
    history: Arc<Vec<String>>,
    /// Replacement instances that failed to start since the last one that
    /// did (see [`MAX_FAILED_STARTS`]).
    failed_starts: u32,
    /// Why the last replacement failed to start.
    last_start_error: Option<String>,
}

/// The exports of a running instance.
struct Live {
    bindings: OperatorWorld,
    /// `handle-batch`, when exported.
    batch: Option<BatchFn>,
    /// `migrate`, when exported.
    migrate: Option<MigrateFn>,
    /// `on-timer`, when exported.
    on_timer: Option<OnTimerFn>,
}
