//! Write Eddy stream operators in Rust.
//!
//! Eddy routes keyed events to operators compiled to WebAssembly
//! components and keeps each key's state for them, durably; the `eddy`
//! command line runs a pipeline of them (its README, at the root of the
//! Eddy repository, has the tour, and `eddy run --help` the flags).
//!
//! An operator is a type that implements [`Operator`], exported with
//! [`export_operator!`] and built for the `wasm32-wasip2` target, which
//! produces a WebAssembly component that `eddy run` loads.
//!
//! # Layout
//!
//! - [`Operator`]: the trait you implement (`init` from config, `handle` per
//!   event).
//! - [`Event`]: the event being handled: key, payload bytes, event time.
//! - [`Value`], [`Map`], [`List`]: typed handles on the current key's state,
//!   stored as JSON so operators in other languages can read it too.
//! - [`emit`] / [`emit_raw`]: send an event on (to the next operator or the
//!   sink).
//! - [`Config`]: the operator's `config` table from the pipeline file.
//! - [`log`]: write to the host's log.
//! - [`timers`]: named event-time timers of the current key and the
//!   watermark; a timer that fires calls [`Operator::on_timer`].
//! - [`window`]: window aggregates: declare an operator a tumbling, hopping
//!   or session window in the pipeline file and write only the aggregate
//!   ([`window::Aggregate`], exported with [`export_window!`]).
//! - [`json`]: the JSON the SDK reads and writes for you (`from_slice`,
//!   `to_writer`): serde_json's results, faster in WebAssembly.
//!
//! The component exports both entry points of the contract: `handle` (one
//! event per call, state calls go to the host) and `handle-batch` (many
//! events per call; the host sends the single values of their keys along
//! and the SDK returns the writes and emits in one reply). Your code is the
//! same either way. Map and list state are served on the per-event path: an
//! operator that uses them is switched to it automatically.
//!
//! Operators are deterministic: the clock reads zero, and random numbers
//! (`wasi:random`, e.g. through the `getrandom` or `rand` crates) are a
//! function of the operator's name, the event's key and its input line, so
//! a replay or another number of workers gives the same numbers. They are
//! not secret. An operator that draws them is handled one event per call
//! (the host cannot tell the events of a batch apart). `HashMap`'s hasher
//! seed is fixed per operator: iterate a `BTreeMap` (or sort) when the
//! order of what you emit matters.
//!
//! Every state call acts on the key of the event being handled, and only on
//! this operator's state. If `handle` returns an error (or panics), none of
//! its state writes or emits take effect and the event goes to the
//! dead-letter output with the error text.
//!
//! # Example
//!
//! A keyed counter: per key, the number of events and the sum of their
//! `amount` field.
//!
//! ```no_run
//! use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
//! use serde::{Deserialize, Serialize};
//!
//! const COUNT: Value<u64> = Value::new("count");
//! const SUM: Value<f64> = Value::new("sum");
//!
//! struct Counter {
//!     field: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     count: u64,
//!     sum: f64,
//! }
//!
//! impl Operator for Counter {
//!     fn init(config: Config) -> Result<Self, Error> {
//!         let field = config.get::<String>("field")?.unwrap_or_else(|| "amount".into());
//!         Ok(Counter { field })
//!     }
//!
//!     fn handle(&mut self, event: Event<'_>) -> Result<(), Error> {
//!         let payload: serde_json::Value = event.json()?;
//!         let amount = payload.get(&self.field).and_then(|v| v.as_f64()).unwrap_or(0.0);
//!         let count = COUNT.get()?.unwrap_or(0) + 1;
//!         let sum = SUM.get()?.unwrap_or(0.0) + amount;
//!         COUNT.set(&count)?;
//!         SUM.set(&sum)?;
//!         emit(event.key, &Out { count, sum })
//!     }
//! }
//!
//! eddy_sdk::export_operator!(Counter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and run it with
//! `eddy run --operator counter=target/wasm32-wasip2/release/counter.wasm --input events.jsonl`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "full-operator",
        pub_export_macro: true,
        export_macro_name: "__export_eddy_operator",
        default_bindings_module: "eddy_sdk::bindings",
        // The batch types are the codec's, so the SDK builds and reads them
        // with `eddy_codec` and no conversion.
        with: {
            "eddy:operator/batch@0.3.0": eddy_codec::wit,
        },
    });
}

use bindings::eddy::operator::{log as wit_log, state};

mod batch;
pub mod json;
mod mem;
pub mod timers;
pub mod window;

pub use timers::Fired;

pub use serde;
pub use serde_json;

/// The error an operator returns from `init` or `handle`: a message that ends
/// up in the pipeline's error output (for `init`) or the dead-letter output
/// (for `handle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with the given message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

/// A stream operator. One instance handles the events of many keys, one at a
/// time; keep per-key data in state ([`Value`], [`Map`], [`List`]), not in
/// fields: fields are per instance and are lost on restart.
pub trait Operator: Sized + 'static {
    /// Builds the operator from its pipeline config. An error stops the
    /// pipeline before any input is read, with the message shown to the user.
    fn init(config: Config) -> Result<Self, Error>;

    /// Handles one event. State handles act on `event.key`.
    fn handle(&mut self, event: Event<'_>) -> Result<(), Error>;

    /// Upgrades the current key's state after a hot swap, before this
    /// version handles the key's first event. `previous` is the content hash
    /// of the version that last wrote the state (as `eddy status` shows it;
    /// empty when unknown). State handles act on that key; [`emit`] is
    /// refused here.
    ///
    /// Called once per key that has state written by another version, on
    /// first touch. The default keeps the state as it is, which is right
    /// when the format did not change. Detect the old format from the state
    /// itself (for example: the old value name is present) so that a
    /// migration is safe to run on state of any earlier version. An error
    /// leaves the key's state untouched and dead-letters the event.
    fn migrate(&mut self, previous: &str) -> Result<(), Error> {
        let _ = previous;
        Ok(())
    }

    /// Handles a timer of this operator that fired (set with
    /// [`timers::set`]): the watermark passed `timer.at`, or the input
    /// ended. State handles, [`timers`] and [`emit`] act on `timer.key`, as
    /// in [`Operator::handle`]; an error discards what the call did and
    /// dead-letters the firing (the timer is consumed either way).
    ///
    /// The default fails: an operator that sets timers implements it.
    fn on_timer(&mut self, timer: Fired<'_>) -> Result<(), Error> {
        Err(Error(format!(
            "timer `{}` of key `{}` fired, but this operator does not handle timers (implement `Operator::on_timer`)",
            timer.name, timer.key
        )))
    }
}

/// The event being handled, borrowed from the host's batch for the length
/// of [`Operator::handle`] (copy what you keep: `event.key.to_string()`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    /// The routing key; state calls act on this key.
    pub key: &'a str,
    /// The payload: the input line (JSON) or what the previous operator
    /// emitted.
    pub value: &'a [u8],
    /// Event time from the pipeline's time field, when it has one.
    pub time: Option<i64>,
}

impl Event<'_> {
    /// Parses the payload as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        json::from_slice(self.value)
            .map_err(|e| Error(format!("payload is not the expected JSON: {e}")))
    }

    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(self.value).map_err(|e| Error(format!("payload is not UTF-8: {e}")))
    }
}

/// The operator's `config` table from the pipeline file, as JSON.
#[derive(Debug, Clone)]
pub struct Config {
    value: serde_json::Value,
}

impl Config {
    /// Parses config text (JSON). Empty text is an empty object.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Config {
                value: serde_json::Value::Object(Default::default()),
            });
        }
        let value =
            serde_json::from_str(text).map_err(|e| Error(format!("config is not JSON: {e}")))?;
        Ok(Config { value })
    }

    /// The whole config deserialized into `T` (use `#[serde(default)]` for
    /// optional fields).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.value).map_err(|e| Error(format!("invalid config: {e}")))
    }

    /// One field: `Ok(None)` when missing, an error naming the field when it
    /// has the wrong type.
    pub fn get<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, Error> {
        match self.value.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| Error(format!("config field `{field}`: {e}"))),
        }
    }

    /// The raw JSON value.
    pub fn json(&self) -> &serde_json::Value {
        &self.value
    }
}

fn encode<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<Vec<u8>, Error> {
    json::to_vec(value).map_err(|e| Error(format!("cannot encode {what}: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Error> {
    json::from_slice(bytes).map_err(|e| Error(format!("state {what} does not decode: {e}")))
}

/// A single value of type `T` per key, stored as JSON under a name.
///
/// Handles are cheap constants: `const COUNT: Value<u64> = Value::new("count");`
pub struct Value<T> {
    name: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Value<T> {
    /// A handle on the value named `name`.
    pub const fn new(name: &'static str) -> Self {
        Value {
            name,
            _t: PhantomData,
        }
    }

    /// The current key's value; `Ok(None)` when it has none, an error when
    /// the stored bytes are not a `T`.
    pub fn get(&self) -> Result<Option<T>, Error> {
        batch::with_value(self.name, |bytes| match bytes {
            None => Ok(None),
            Some(bytes) => decode(self.name, bytes).map(Some),
        })
    }

    /// Calls `f` with the value's stored JSON bytes, without decoding them
    /// (`None` when the key has no such value); for operators that read
    /// their own state faster than serde.
    pub fn with_json<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        batch::with_value(self.name, |bytes| bytes.map(f))
    }

    /// Stores `value` for the current key.
    pub fn set(&self, value: &T) -> Result<(), Error> {
        // In a batch, encoded straight into the batch's buffer.
        match batch::set_with(self.name, |buf| json::to_writer(buf, value)) {
            Some(r) => r.map_err(|e| Error(format!("cannot encode {}: {e}", self.name))),
            None => {
                batch::set(self.name, &encode(self.name, value)?);
                Ok(())
            }
        }
    }

    /// Sets the value from its JSON encoding, as [`Value::set`] would make
    /// it (`serde_json::to_vec(&value)`), e.g. to emit the same bytes with
    /// [`emit_raw`] without encoding the value twice. The bytes are stored
    /// as given.
    pub fn set_json(&self, json: &[u8]) {
        batch::set(self.name, json);
    }

    /// Removes the value; returns whether there was one.
    pub fn delete(&self) -> bool {
        batch::delete(self.name)
    }

    /// Reads the value (or `T::default()`), applies `f`, stores and returns
    /// the result.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T, Error>
    where
        T: Default,
    {
        let next = f(self.get()?.unwrap_or_default());
        self.set(&next)?;
        Ok(next)
    }
}

/// A map from string fields to values of type `V` per key.
pub struct Map<V> {
    name: &'static str,
    _v: PhantomData<fn() -> V>,
}

impl<V: Serialize + DeserializeOwned> Map<V> {
    /// A handle on the map named `name`.
    pub const fn new(name: &'static str) -> Self {
        Map {
            name,
            _v: PhantomData,
        }
    }

    /// The value of `field`; `Ok(None)` when missing.
    pub fn get(&self, field: &str) -> Result<Option<V>, Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        match state::map_get(self.name, field) {
            None => Ok(None),
            Some(bytes) => decode(self.name, &bytes).map(Some),
        }
    }

    /// Sets `field` to `value`.
    pub fn set(&self, field: &str, value: &V) -> Result<(), Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        state::map_set(self.name, field, &encode(self.name, value)?);
        Ok(())
    }

    /// Removes `field`; returns whether it existed.
    pub fn remove(&self, field: &str) -> bool {
        if batch::active() {
            batch::stop();
            return false;
        }
        state::map_delete(self.name, field)
    }

    /// At most `limit` fields and values from field `start` on
    /// (inclusive; `""` for the first field), sorted by field. Only those
    /// are read, whatever the map's size: page through a big map with
    /// [`Map::after`] of the last field returned as the next `start`.
    pub fn range(&self, start: &str, limit: u32) -> Result<Vec<(String, V)>, Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        state::map_range(self.name, start, limit)
            .into_iter()
            .map(|(k, bytes)| Ok((k, decode(self.name, &bytes)?)))
            .collect()
    }

    /// The smallest field after `field` (`field` and a 0 byte): the
    /// `start` of the page after one that ended with `field`.
    pub fn after(field: &str) -> String {
        let mut s = String::with_capacity(field.len() + 1);
        s.push_str(field);
        s.push('\0');
        s
    }

    /// All fields and values, sorted by field. Every field is read (a big
    /// map's from the state directory): page through a big one with
    /// [`Map::range`].
    pub fn entries(&self) -> Result<Vec<(String, V)>, Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        state::map_entries(self.name)
            .into_iter()
            .map(|(k, bytes)| Ok((k, decode(self.name, &bytes)?)))
            .collect()
    }

    /// The number of fields.
    pub fn len(&self) -> u32 {
        if batch::active() {
            batch::stop();
            return 0;
        }
        state::map_len(self.name)
    }

    /// Whether the map has no field.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An append-only list of `T` per key, oldest first.
pub struct List<T> {
    name: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// A handle on the list named `name`.
    pub const fn new(name: &'static str) -> Self {
        List {
            name,
            _t: PhantomData,
        }
    }

    /// Appends `item`; returns the new length.
    pub fn push(&self, item: &T) -> Result<u32, Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        Ok(state::list_push(self.name, &encode(self.name, item)?))
    }

    /// The number of items.
    pub fn len(&self) -> u32 {
        if batch::active() {
            batch::stop();
            return 0;
        }
        state::list_len(self.name)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items with index in `[start, end)` (clamped), oldest first.
    pub fn range(&self, start: u32, end: u32) -> Result<Vec<T>, Error> {
        if batch::active() {
            return Err(batch::stop_error());
        }
        state::list_range(self.name, start, end)
            .iter()
            .map(|b| decode(self.name, b))
            .collect()
    }

    /// All items, oldest first.
    pub fn all(&self) -> Result<Vec<T>, Error> {
        self.range(0, u32::MAX)
    }

    /// The newest `n` items, oldest first.
    pub fn last(&self, n: u32) -> Result<Vec<T>, Error> {
        let len = self.len();
        self.range(len.saturating_sub(n), len)
    }

    /// Keeps only the newest `keep` items; returns how many were dropped.
    pub fn trim(&self, keep: u32) -> u32 {
        if batch::active() {
            batch::stop();
            return 0;
        }
        state::list_trim(self.name, keep)
    }
}

/// Removes all state of the current key for this operator.
pub fn clear_key() {
    if batch::active() {
        return batch::stop();
    }
    state::clear()
}

/// Emits `value` serialized as JSON, keyed by `key`.
pub fn emit<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    if batch::emit_json(key, value)? {
        return Ok(());
    }
    batch::emit(key, &encode("emitted value", value)?);
    Ok(())
}

/// Emits raw payload bytes keyed by `key`.
pub fn emit_raw(key: &str, value: &[u8]) {
    batch::emit(key, value)
}

/// Logging to the host's log, tagged with the operator and the current key.
pub mod log {
    use super::wit_log::{log, Level};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub use crate::bindings::eddy::operator::types::Event as WitEvent;
    pub use crate::bindings::Guest;
    pub use eddy_codec::wit::{
        Added as WitAdded, Adds as WitAdds, Bounds as WitBounds, Strings as WitStrings,
    };
    pub use eddy_codec::wit::{Batch as WitBatch, BatchResult as WitBatchResult};

    pub fn init<T: Operator>(
        slot: &'static LocalKey<RefCell<Option<T>>>,
        config: String,
    ) -> Result<(), String> {
        let config = Config::from_json(&config).map_err(|e| e.0)?;
        let op = T::init(config).map_err(|e| e.0)?;
        slot.with(|s| *s.borrow_mut() = Some(op));
        Ok(())
    }

    pub fn handle_batch<T: Operator>(
        slot: &'static LocalKey<RefCell<Option<T>>>,
        batch: WitBatch,
    ) -> WitBatchResult {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let op = s.as_mut().expect("handle-batch called before init");
            crate::batch::run(batch, |event| op.handle(event))
        })
    }

    pub fn migrate<T: Operator>(
        slot: &'static LocalKey<RefCell<Option<T>>>,
        previous: String,
    ) -> Result<(), String> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let op = s
                .as_mut()
                .ok_or_else(|| "migrate called before init".to_string())?;
            op.migrate(&previous).map_err(|e| e.0)
        })
    }

    pub fn on_timer<T: Operator>(
        slot: &'static LocalKey<RefCell<Option<T>>>,
        key: String,
        name: String,
        at: i64,
    ) -> Result<(), String> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let op = s
                .as_mut()
                .ok_or_else(|| "on-timer called before init".to_string())?;
            op.on_timer(Fired {
                key: &key,
                name: &name,
                at,
            })
            .map_err(|e| e.0)
        })
    }

    pub fn handle<T: Operator>(
        slot: &'static LocalKey<RefCell<Option<T>>>,
        event: WitEvent,
    ) -> Result<(), String> {
        slot.with(|s| {
            let mut s = s.borrow_mut();
            let op = s
                .as_mut()
                .ok_or_else(|| "handle called before init".to_string())?;
            op.handle(Event {
                key: &event.key,
                value: &event.value,
                time: event.time,
            })
            .map_err(|e| e.0)
        })
    }
}

/// Exports a type implementing [`Operator`] as the component's operator.
///
/// Use it once, at the crate root of a `cdylib` built for `wasm32-wasip2`.
#[macro_export]
macro_rules! export_operator {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __EDDY_OPERATOR: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __EddyExport;
            impl $crate::__private::Guest for __EddyExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$ty>(&__EDDY_OPERATOR, config)
                }
                fn migrate(
                    previous: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::migrate::<$ty>(&__EDDY_OPERATOR, previous)
                }
                fn handle_batch(
                    batch: $crate::__private::WitBatch,
                ) -> $crate::__private::WitBatchResult {
                    $crate::__private::handle_batch::<$ty>(&__EDDY_OPERATOR, batch)
                }
                fn handle(
                    event: $crate::__private::WitEvent,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::handle::<$ty>(&__EDDY_OPERATOR, event)
                }
                fn on_timer(
                    key: ::std::string::String,
                    name: ::std::string::String,
                    at: i64,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::on_timer::<$ty>(&__EDDY_OPERATOR, key, name, at)
                }
            }
    $crate::bindings::__export_eddy_operator!(__EddyExport with_types_in $crate::bindings);
        };
    };
}
