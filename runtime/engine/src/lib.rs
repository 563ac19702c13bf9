//! Eddy: a stateful stream runtime for WebAssembly component operators.
//!
//! This crate is the engine. The `eddy` command line is `eddy-cli`
//! (`runtime/cli`), `eddy build` is `eddy-build` (`runtime/build`) and the
//! benchmarks are `eddy-bench` (`runtime/bench`).
//!
//! # Layout
//!
//! The engine's modules are named after the stage of the data path they
//! implement, in its order (see `docs/architecture.md` for the threads,
//! channels and where each guarantee is enforced):
//!
//! - `config`: the pipeline file and command-line overrides
//!   ([`Pipeline`], [`Limits`]).
//! - `source`: the input read from the last checkpoint's position, cut
//!   into lines ([`read_lines`]), each decoded for its key and time
//!   ([`decode`]).
//! - `route`: key → key group → worker ([`route`]).
//! - `worker`: the worker threads, each running every operator of the
//!   chain for its keys.
//! - `operator`: the [`Operator`] trait a worker drives; the host context
//!   [`OpCtx`] with one file per WIT interface; Wasm components
//!   ([`WasmComponent`], [`WasmOperator`]) and the native baseline
//!   ([`NativeCounter`]).
//! - `state`: one key's state ([`Entity`]) and the redb state directory
//!   ([`Store`]).
//! - `checkpoint`: the committer thread: one redb transaction per
//!   checkpoint.
//! - `sink`: output and dead-letter files.
//! - `swap`: operator versions and hot swap ([`Controller`] prepares,
//!   the coordinator switches at a barrier).
//! - [`control`]: the owner-only control socket (`eddy status`, `swap`,
//!   `rollback`): its protocol, server and client.
//! - `stats`: the counters `eddy status` shows.
//! - `pipeline`: a running pipeline: [`start`] returns a [`Running`]
//!   handle that owns every thread; [`run`] runs one to the end.
//!
//! Module dependencies go one way (a type two modules share lives below
//! both); the `module_graph` test checks it and prints the listing.
//!
#![deny(missing_docs)]

mod checkpoint;
pub mod clock;
mod config;
pub mod control;
mod json;
mod operator;
mod pipeline;
mod route;
mod sink;
mod source;
mod state;
mod stats;
mod swap;
mod worker;

#[cfg(test)]
mod module_graph;

pub use config::{
    default_workers, CompactPolicy, Delivery, HttpListen, Input, KafkaInput, KafkaOutput,
    LatePolicy, Limits, OperatorSpec, Output, Overrides, Pipeline, PipelineError, Refresh, TtlSpec,
    WatermarkSpec, WindowKind, WindowSpec,
};
pub use operator::CacheStats;
pub use operator::{
    cap_reason, engine, engine_with, load_operators, Cache, CacheError, Compiled, ComponentError,
    Emits, EventRef, HandleError, HostError, InitError, Limit, Loaded, NativeCounter,
    NativeFactory, OpCtx, Operator, OperatorKind, RunError, StartError, WasmComponent,
    WasmOperator, CONTRACT,
};
pub use operator::{fire_due, FireDone, TimerRef, TimerTable, TimerUse, END_ROUNDS, TTL_PREFIX};
pub use operator::{
    window_operator, Aggregate, WasmAggregate, WasmWindow, WindowInfo, WindowOperator, WindowSum,
    WINDOW_STATE,
};
pub use pipeline::{
    run, run_notify, start, OperatorSummary, Progress, Running, Shutdown, Started, Summary,
};
pub use route::{key_group, route, KEY_GROUPS};
pub use source::{decode, read_lines, Chunk, DecodeError, Decoded, End, Follow, ReadError};
pub use state::{
    component_hash, record_json, value_json, Checkpoint, CorruptRecord, Entity, FreeSpace, List,
    ListRows, Map, MapRows, MapSpill, Reader, SnapshotError, SnapshotReport, SnapshotSource,
    SourcePos, Spill, StateWrite, Store, StoreError, MAX_COMPONENT_BYTES, SHORT_VERSION_ID_LEN,
    SPILL_BYTES, SPILL_ITEMS, UNSPILL_ITEMS, VERSION_ID_LEN,
};
pub use stats::{CompactStatus, KafkaPartition, OpStats, SwapPause, WorkerLive};
pub use swap::{Controller, NotDurable, Refused, ResolveError, SwapReport, Version, Versions};

/// Test hooks (see [`testing::fail_restarts`]).
#[doc(hidden)]
pub mod testing {
    pub use crate::operator::wasm::testing::fail_restarts;
}
