//! Eddy's benchmarks, run through the `eddy` command line.
//!
//! # Layout
//!
//! - [`counter`]: `eddy bench`, the keyed counter as a Wasm component
//!   against the same counter written natively, on the operator path and
//!   end to end; also the restart-on-large-state measurement.
//! - [`swap`]: `eddy bench-swap`, the pause a hot swap costs each worker
//!   under load.
//! - [`langs`]: `eddy bench-langs`, one operator built from several
//!   languages side by side.
//! - [`cache`]: `eddy bench-cache`, the state cache with a memory budget
//!   against the unbounded one: peak RSS, rate, hit rate, checkpoint cost.
//! - [`state`]: `eddy bench-state`, what state reads through the control
//!   plane cost a pipeline running at full speed.
//! - [`window`]: `eddy bench-window`, tumbling one-minute windows through a
//!   Wasm window aggregate against the same aggregate written natively and
//!   against the keyed counter, end to end.

pub mod cache;
pub mod counter;
pub mod kafka;
pub mod langs;
pub mod state;
pub mod swap;
pub mod window;
