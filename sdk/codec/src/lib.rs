//! The typed batch of the Eddy operator contract (`wit/batch.wit`): the
//! one codec of the host–guest boundary, shared by the host (`eddy-runtime`,
//! feature `host`) and the Rust SDK (`eddy-sdk`).
//!
//! # Layout
//!
//! - [`wit`]: the WIT types themselves ([`wit::Batch`], [`wit::BatchResult`],
//!   [`wit::Strings`]). Both sides' bindings use these very types: the
//!   SDK's `wit_bindgen::generate!` maps `eddy:operator/batch` here, and
//!   with feature `host` they derive wasmtime's `ComponentType`, `Lift` and
//!   `Lower`, which the host's typed `handle-batch` call uses.
//! - [`BatchBuilder`] (host) and [`ResultBuilder`] (guest): build a batch
//!   or a result in reused buffers, no allocation per event.
//! - [`CheckedResult`] (host): checks a result a component returned before
//!   anything of it is applied; a violation is a [`ResultError`] naming the
//!   column or event and the index, never a panic or an out-of-bounds read.
//! - [`BatchView`] (guest): checks a batch the host sent, likewise
//!   ([`BatchError`]).
//!
//! # The shape
//!
//! A batch and a result are columns: per item a number in a list of
//! numbers, and byte strings (keys, names, values, payloads, reasons) in
//! [`wit::Strings`] columns, one buffer each with the strings' end offsets.
//! So they cross the boundary as a few bulk copies whatever they hold. The
//! same contract as lists of records took 8,668 instructions per event on
//! the keyed counter's operator path against 5,444 for the untyped frame
//! it replaces (wasmtime lifts and lowers records field by field); as
//! columns it takes 5,943. See `wit/batch.wit` and `docs/performance.md`.
//!
//! ```
//! use eddy_codec::{BatchBuilder, BatchView, CheckedResult, Handled, Limits, ResultBuilder};
//!
//! // Host: a batch of one event of `user-1`, whose `count` is 41.
//! let mut batch = BatchBuilder::new();
//! let k = batch.key("user-1", [("count", &b"41"[..])]).unwrap();
//! batch.event(k, None, b"{}").unwrap();
//!
//! // Guest: read it, handle the event, build the result.
//! let view = BatchView::new(batch.batch()).unwrap();
//! let mut result = ResultBuilder::new();
//! for event in view.events() {
//!     let key = view.key(event.key as usize).unwrap();
//!     result.emit(key, b"42");
//!     result.write(b"count", Some(b"42"));
//!     result.ok();
//! }
//! let result = result.finish();
//!
//! // Host: check the result, then apply it.
//! let checked = CheckedResult::new(&result, 1, &Limits::NONE).unwrap();
//! for outcome in checked.iter() {
//!     let Handled::Ok { mut emits, mut writes } = outcome else { panic!() };
//!     assert_eq!(emits.next(), Some(("user-1", &b"42"[..])));
//!     assert_eq!(writes.next(), Some(("count", Some(&b"42"[..]))));
//! }
//! ```

#![deny(missing_docs)]

mod build;
mod bytes;
mod check;
mod read;
pub mod wit;

pub use build::{BatchBuilder, BuildError, ResultBuilder};
pub use bytes::{extend, json_number};
pub use check::{
    CheckedResult, Column, Emits, Field, Handled, Limits, Outcomes, ResultError, Writes,
};
pub use read::{BatchColumn, BatchError, BatchView, EventRef, KeyRef};
pub use wit::StringsError;
