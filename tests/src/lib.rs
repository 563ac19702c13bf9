//! End-to-end tests of Eddy live in `tests/all/`; this library only exposes
//! the paths of the example operators that `build.rs` compiled.
//!
//! # Layout
//!
//! - `build.rs`: builds `plugins/` for wasm32-wasip2 under `OUT_DIR`.
//! - `tests/all/`: one test binary, one module per area, `util.rs` helpers.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
