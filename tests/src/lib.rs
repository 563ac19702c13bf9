//! End-to-end tests of Eddy live in `tests/all/`; this library only exposes
//! the paths of the operators that `build.rs` compiled.
//!
//! # Layout
//!
//! - `build.rs`: builds the example operators (`plugins/`) and the
//!   test-only ones (`fixtures/`) for wasm32-wasip2 under `OUT_DIR`.
//! - `fixtures/`: the test-only operators (later counter versions for hot
//!   swap, operators that fail on purpose, a component of another world).
//! - `tests/all/`: one test binary, one module per area, `util.rs` helpers.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
