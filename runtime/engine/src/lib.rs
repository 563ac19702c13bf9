//! Eddy: a stateful stream runtime for WebAssembly component operators.
//!
//! # Layout
//!
//! - [`state`]: one key's state (values, maps, lists), its undo journal and
//!   record encoding.
//! - [`store`]: the redb state directory; checkpoints are one transaction.
//! - [`host`]: the host side of the state interface, shared by Wasm and
//!   native operators ([`host::OpCtx`]).
//! - [`operator`]: the [`operator::Operator`] trait a worker drives.
//! - [`cache`]: compiled components kept across runs.
//! - [`wasm`]: components compiled once ([`wasm::Plugin`]) and instantiated
//!   per worker ([`wasm::WasmOperator`]).
//! - [`batch`]: the batched fast path of a Wasm operator: the typed batch
//!   (`wit/batch.wit`) built, its result checked by `eddy_codec` and
//!   applied.
//! - [`native`]: native Rust operators (the benchmark baseline).
//! - [`decode`]: key and time extraction from a JSON line.
//! - [`io`]: the input reader thread, the sink thread, output formatting.
//! - [`worker`]: worker threads, routing, batches.
//! - [`runner`]: [`runner::run`] wires it all and drives checkpoints.
//! - [`swap`]: hot swap: operator versions, the [`swap::Controller`].
//! - [`control`]: the control endpoint (`eddy status`, `swap`, `rollback`).
//! - [`pipeline`]: the pipeline file and flags.
//! - [`mod@bench`]: the `eddy bench` command.
//! - [`bench_swap`]: the `eddy bench-swap` command (hot-swap pause).
//! - [`bench_langs`]: the `eddy bench-langs` command (one operator in
//!   several languages).
//! - [`build`]: the `eddy build` command (operators from Rust, Python,
//!   JavaScript or C source).
//! - [`cli`]: the `eddy` command line.
//! - [`bindings`]: the host bindings of `wit/`.
pub mod batch;
pub mod bench;
pub mod bench_langs;
pub mod bench_swap;
pub mod bindings;
pub mod build;
pub mod build_c;
pub mod cache;
pub mod cli;
pub mod control;
pub mod decode;
pub mod host;
pub mod io;
pub mod native;
pub mod operator;
pub mod pipeline;
pub mod runner;
pub mod state;
pub mod store;
pub mod swap;
pub mod wasm;
pub mod worker;
