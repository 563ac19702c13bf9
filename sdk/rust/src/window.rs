//! Window aggregates: the host keeps the windows, you write the aggregate.
//!
//! Declare an operator a window in the pipeline file, and the host assigns
//! each event to its tumbling, hopping or session windows, keeps one
//! accumulator per key and pane (or session), fires each window once the
//! watermark reaches its end and emits what [`Aggregate::finish`] returns
//! under the window's key:
//!
//! ```toml
//! [[operator]]
//! name = "per-minute"
//! component = "per_minute.wasm"
//! window = { kind = "tumbling", size = 60000 }   # in time-field units
//! ```
//!
//! You write [`Aggregate`]: an accumulator type (stored as JSON) and
//! `create`, `add`, `merge` and `finish` over it, and export it with
//! [`export_window!`](crate::export_window). The component exports world
//! `window-operator`: many events are folded per call, and the SDK decodes
//! and encodes each accumulator once per call, not once per event.
//!
//! ```no_run
//! use eddy_sdk::window::{Aggregate, Window, WindowEvent};
//! use eddy_sdk::{Config, Error};
//! use serde::{Deserialize, Serialize};
//!
//! struct Spend;
//!
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Totals {
//!     count: u64,
//!     sum: f64,
//! }
//!
//! #[derive(Serialize)]
//! struct Out {
//!     start: i64,
//!     end: i64,
//!     count: u64,
//!     sum: f64,
//! }
//!
//! impl Aggregate for Spend {
//!     type Acc = Totals;
//!     type Output = Out;
//!
//!     fn init(_config: Config) -> Result<Self, Error> {
//!         Ok(Spend)
//!     }
//!     fn create(&self) -> Totals {
//!         Totals::default()
//!     }
//!     fn add(&self, acc: &mut Totals, event: WindowEvent<'_>) -> Result<(), Error> {
//!         #[derive(Deserialize)]
//!         struct In {
//!             amount: f64,
//!         }
//!         let e: In = event.json()?;
//!         acc.count += 1;
//!         acc.sum += e.amount;
//!         Ok(())
//!     }
//!     fn merge(&self, into: &mut Totals, other: Totals) -> Result<(), Error> {
//!         into.count += other.count;
//!         into.sum += other.sum;
//!         Ok(())
//!     }
//!     fn finish(&self, w: Window<'_>, acc: Totals) -> Result<Option<Out>, Error> {
//!         Ok(Some(Out { start: w.start, end: w.end, count: acc.count, sum: acc.sum }))
//!     }
//! }
//!
//! eddy_sdk::export_window!(Spend);
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{json, Config, Error};

#[doc(hidden)]
// `add` and `finish` take records whose fields flatten to many parameters.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "window-operator",
        pub_export_macro: true,
        export_macro_name: "__export_eddy_window",
        default_bindings_module: "eddy_sdk::window::bindings",
        with: {
            "eddy:operator/batch@0.3.0": eddy_codec::wit,
            "eddy:operator/window@0.3.0": eddy_codec::wit,
        },
    });
}

/// An event being folded into its window: its payload and event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowEvent<'a> {
    /// The payload: the input line (JSON) or what the previous operator
    /// emitted.
    pub value: &'a [u8],
    /// Its event time (windows need one).
    pub time: i64,
}

impl WindowEvent<'_> {
    /// Parses the payload as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        json::from_slice(self.value)
            .map_err(|e| Error::msg(format!("payload is not the expected JSON: {e}")))
    }
}

/// A window being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    /// The key whose window it is (what is emitted goes out under it).
    pub key: &'a str,
    /// Its first event time (inclusive); a session's first event's time.
    pub start: i64,
    /// Its end (exclusive); a session's last event's time plus the gap.
    pub end: i64,
}

/// A window aggregate: what a window computes, over an accumulator of
/// your own type. One instance serves every key and window: keep per-window
/// data in the accumulator, not in fields.
pub trait Aggregate: Sized + 'static {
    /// The accumulator of one key's window (or pane, or session), stored by
    /// the host as its JSON encoding.
    type Acc: Serialize + DeserializeOwned + Clone;
    /// What a window emits (as JSON).
    type Output: Serialize;

    /// Builds the aggregate from its pipeline config. An error stops the
    /// pipeline before any input is read, with the message shown.
    fn init(config: Config) -> Result<Self, Error>;

    /// The empty accumulator, that a window's first event is added to.
    fn create(&self) -> Self::Acc;

    /// Folds `event` into `acc`. An error dead-letters the event with the
    /// message, and `acc` is put back as it was before the call.
    fn add(&self, acc: &mut Self::Acc, event: WindowEvent<'_>) -> Result<(), Error>;

    /// Merges `other` into `into`: the panes of a hopping window (oldest
    /// first), or the sessions an event bridges. An error dead-letters the
    /// window's firing (or the bridging event).
    fn merge(&self, into: &mut Self::Acc, other: Self::Acc) -> Result<(), Error>;

    /// What window `window` emits from its accumulator; `None` emits
    /// nothing. An error dead-letters the firing; the window's accumulator
    /// is kept.
    fn finish(&self, window: Window<'_>, acc: Self::Acc) -> Result<Option<Self::Output>, Error>;
}

#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use eddy_codec::wit::{Added, Adds, Bounds, Strings};

    use super::{Aggregate, Window, WindowEvent};
    use crate::{json, Config};

    pub use super::bindings::Guest;

    type Slot<T> = LocalKey<RefCell<Option<T>>>;

    fn decode<T: Aggregate>(bytes: &[u8]) -> Result<T::Acc, String> {
        json::from_slice(bytes).map_err(|e| format!("a window accumulator does not decode: {e}"))
    }

    fn encode<T: Aggregate>(acc: &T::Acc, out: &mut Vec<u8>) -> Result<(), String> {
        json::to_writer(out, acc).map_err(|e| format!("cannot encode a window accumulator: {e}"))
    }

    pub fn init<T: Aggregate>(slot: &'static Slot<T>, config: String) -> Result<(), String> {
        let config = Config::from_json(&config).map_err(|e| e.message().to_string())?;
        let agg = T::init(config).map_err(|e| e.message().to_string())?;
        slot.with(|s| *s.borrow_mut() = Some(agg));
        Ok(())
    }

    pub fn add<T: Aggregate>(slot: &'static Slot<T>, adds: Adds) -> Added {
        slot.with(|s| {
            let s = s.borrow();
            let agg = s.as_ref().expect("add called before init");
            run_add(agg, &adds)
        })
    }

    /// Folds the events of `adds` (see `wit/window.wit`).
    pub fn run_add<T: Aggregate>(agg: &T, adds: &Adds) -> Added {
        let mut fresh = adds.fresh.iter().peekable();
        let mut accs: Vec<Result<T::Acc, String>> = (0..adds.accumulators.len())
            .map(|i| {
                if fresh.peek().is_some_and(|&&f| f as usize == i) {
                    fresh.next();
                    Ok(agg.create())
                } else {
                    decode::<T>(adds.accumulators.get(i).unwrap_or_default())
                }
            })
            .collect();
        let mut out = Added::default();
        for (k, (&target, &time)) in adds.targets.iter().zip(&adds.times).enumerate() {
            let value = adds.payloads.get(k).unwrap_or_default();
            let failed = match accs.get_mut(target as usize) {
                None => Some(format!("event {k}: no accumulator {target}")),
                Some(Err(reason)) => Some(reason.clone()),
                Some(Ok(acc)) => {
                    let before = acc.clone();
                    match agg.add(acc, WindowEvent { value, time }) {
                        Ok(()) => None,
                        Err(e) => {
                            *acc = before;
                            Some(e.message().to_string())
                        }
                    }
                }
            };
            if let Some(reason) = failed {
                out.failed.push(k as u32);
                out.reasons.push(reason.as_bytes());
            }
        }
        for (i, acc) in accs.iter().enumerate() {
            let written = match acc {
                Ok(acc) => out
                    .accumulators
                    .push_with(|buf| encode::<T>(acc, buf))
                    .is_ok(),
                Err(_) => false,
            };
            if !written {
                // Handed back as it came.
                out.accumulators
                    .push(adds.accumulators.get(i).unwrap_or_default());
            }
        }
        out
    }

    /// The accumulators of `column` merged, oldest first.
    fn merged<T: Aggregate>(agg: &T, column: &Strings) -> Result<T::Acc, String> {
        let mut acc: Option<T::Acc> = None;
        for i in 0..column.len() {
            let next = decode::<T>(column.get(i).unwrap_or_default())?;
            match &mut acc {
                None => acc = Some(next),
                Some(a) => agg.merge(a, next).map_err(|e| e.message().to_string())?,
            }
        }
        Ok(acc.unwrap_or_else(|| agg.create()))
    }

    pub fn merge<T: Aggregate>(
        slot: &'static Slot<T>,
        accumulators: Strings,
    ) -> Result<Vec<u8>, String> {
        slot.with(|s| {
            let s = s.borrow();
            let agg = s.as_ref().ok_or("merge called before init")?;
            let acc = merged(agg, &accumulators)?;
            let mut out = Vec::new();
            encode::<T>(&acc, &mut out)?;
            Ok(out)
        })
    }

    pub fn finish<T: Aggregate>(
        slot: &'static Slot<T>,
        window: Bounds,
        accumulators: Strings,
    ) -> Result<Option<Vec<u8>>, String> {
        slot.with(|s| {
            let s = s.borrow();
            let agg = s.as_ref().ok_or("finish called before init")?;
            let acc = merged(agg, &accumulators)?;
            let w = Window {
                key: &window.key,
                start: window.start,
                end: window.end,
            };
            match agg.finish(w, acc) {
                Ok(None) => Ok(None),
                Ok(Some(out)) => json::to_vec(&out)
                    .map(Some)
                    .map_err(|e| format!("cannot encode the window's output: {e}")),
                Err(e) => Err(e.message().to_string()),
            }
        })
    }
}

/// Exports a type implementing [`Aggregate`] as the component's window
/// aggregate (world `window-operator`).
///
/// Use it once, at the crate root of a `cdylib` built for `wasm32-wasip2`,
/// instead of [`export_operator!`](crate::export_operator).
#[macro_export]
macro_rules! export_window {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __EDDY_WINDOW: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __EddyWindow;
            impl $crate::window::__private::Guest for __EddyWindow {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::window::__private::init::<$ty>(&__EDDY_WINDOW, config)
                }
                fn add(adds: $crate::__private::WitAdds) -> $crate::__private::WitAdded {
                    $crate::window::__private::add::<$ty>(&__EDDY_WINDOW, adds)
                }
                fn merge(
                    accumulators: $crate::__private::WitStrings,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::window::__private::merge::<$ty>(&__EDDY_WINDOW, accumulators)
                }
                fn finish(
                    window: $crate::__private::WitBounds,
                    accumulators: $crate::__private::WitStrings,
                ) -> ::std::result::Result<
                    ::std::option::Option<::std::vec::Vec<u8>>,
                    ::std::string::String,
                > {
                    $crate::window::__private::finish::<$ty>(&__EDDY_WINDOW, window, accumulators)
                }
            }
            $crate::window::bindings::__export_eddy_window!(__EddyWindow with_types_in $crate::window::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use eddy_codec::wit::{Adds, Strings};

    use super::__private::run_add;
    use super::{Aggregate, Window, WindowEvent};
    use crate::{Config, Error};

    /// Sums `n`; an event without `n` fails.
    struct Sum;

    impl Aggregate for Sum {
        type Acc = Vec<i64>;
        type Output = i64;
        fn init(_: Config) -> Result<Self, Error> {
            Ok(Sum)
        }
        fn create(&self) -> Vec<i64> {
            Vec::new()
        }
        fn add(&self, acc: &mut Vec<i64>, e: WindowEvent<'_>) -> Result<(), Error> {
            // Changes the accumulator before failing: the SDK puts it back.
            acc.push(e.time);
            #[derive(serde::Deserialize)]
            struct In {
                n: i64,
            }
            let n = e.json::<In>()?.n;
            *acc.last_mut().unwrap() = n;
            Ok(())
        }
        fn merge(&self, into: &mut Vec<i64>, other: Vec<i64>) -> Result<(), Error> {
            into.extend(other);
            Ok(())
        }
        fn finish(&self, _: Window<'_>, acc: Vec<i64>) -> Result<Option<i64>, Error> {
            Ok(Some(acc.iter().sum()))
        }
    }

    fn strings(items: &[&[u8]]) -> Strings {
        let mut s = Strings::default();
        for i in items {
            s.push(i);
        }
        s
    }

    /// Events fold into their accumulators in order, a new one starts from
    /// `create`, a failed event is left out (its accumulator as it was
    /// before it) and named with its reason, and a damaged accumulator
    /// fails its events and comes back unchanged.
    #[test]
    fn add_folds_in_order_and_leaves_failed_events_out() {
        let adds = Adds {
            accumulators: strings(&[b"[1]", b"", b"not json"]),
            fresh: vec![1],
            targets: vec![0, 1, 0, 2, 1],
            payloads: strings(&[
                b"{\"n\":2}",
                b"{\"n\":5}",
                b"{}",
                b"{\"n\":1}",
                b"{\"n\":6}",
            ]),
            times: vec![10, 11, 12, 13, 14],
        };
        let added = run_add(&Sum, &adds);
        added.check(&adds).unwrap();
        let accs: Vec<&[u8]> = (0..3).map(|i| added.accumulators.get(i).unwrap()).collect();
        assert_eq!(accs, [&b"[1,2]"[..], b"[5,6]", b"not json"]);
        assert_eq!(added.failed, [2, 3]);
        let reasons: Vec<&str> = (0..2)
            .map(|i| std::str::from_utf8(added.reasons.get(i).unwrap()).unwrap())
            .collect();
        assert_eq!(
            reasons,
            [
                "payload is not the expected JSON: missing field `n` at line 1 column 2",
                "a window accumulator does not decode: expected ident at line 1 column 2"
            ]
        );
    }
}
