//! Per-user sessions: a session window aggregate (the pipeline declares
//! `window = { kind = "session", gap = .. }`) over page views
//! `{"user": .., "ts": .., "page": ..}`. The host keeps each user's open
//! sessions, merges two when a view bridges them and closes one when no
//! view came for `gap`; this aggregate counts the views and keeps the
//! first and last page, and a closed session emits
//! `{"start": .., "end": .., "views": .., "pages": .., "entry": .., "exit": .., "duration_ms": ..}`
//! where `duration_ms` runs from the first view to the last.

use eddy_sdk::window::{Aggregate, Window, WindowEvent};
use eddy_sdk::{Config, Error};
use serde::{Deserialize, Serialize};

struct Sessions;

/// A session so far.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Acc {
    views: u64,
    /// Distinct pages, sorted.
    pages: Vec<String>,
    /// The first view's time and page.
    first: Option<(i64, String)>,
    /// The last view's time and page.
    last: Option<(i64, String)>,
}

#[derive(Serialize)]
struct Out<'a> {
    start: i64,
    end: i64,
    views: u64,
    pages: usize,
    entry: &'a str,
    exit: &'a str,
    duration_ms: i64,
}

#[derive(Deserialize)]
struct View {
    page: String,
}

/// `a` or `b`, whichever is earlier (`later`: later); ties keep `a`.
fn pick(a: Option<(i64, String)>, b: Option<(i64, String)>, later: bool) -> Option<(i64, String)> {
    match (a, b) {
        (Some(a), Some(b)) if (b.0 > a.0) == later && b.0 != a.0 => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

impl Aggregate for Sessions {
    type Acc = Acc;
    type Output = serde_json_value::Value;

    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Sessions)
    }

    fn create(&self) -> Acc {
        Acc::default()
    }

    fn add(&self, acc: &mut Acc, event: WindowEvent<'_>) -> Result<(), Error> {
        let view: View = event.json()?;
        acc.views += 1;
        if let Err(i) = acc.pages.binary_search(&view.page) {
            acc.pages.insert(i, view.page.clone());
        }
        let this = Some((event.time, view.page));
        acc.first = pick(acc.first.take(), this.clone(), false);
        acc.last = pick(acc.last.take(), this, true);
        Ok(())
    }

    fn merge(&self, into: &mut Acc, other: Acc) -> Result<(), Error> {
        into.views += other.views;
        for p in other.pages {
            if let Err(i) = into.pages.binary_search(&p) {
                into.pages.insert(i, p);
            }
        }
        into.first = pick(into.first.take(), other.first, false);
        into.last = pick(into.last.take(), other.last, true);
        Ok(())
    }

    fn finish(&self, w: Window<'_>, acc: Acc) -> Result<Option<Self::Output>, Error> {
        let (Some((t0, entry)), Some((t1, exit))) = (&acc.first, &acc.last) else {
            return Ok(None);
        };
        let out = Out {
            start: w.start,
            end: w.end,
            views: acc.views,
            pages: acc.pages.len(),
            entry,
            exit,
            duration_ms: t1 - t0,
        };
        eddy_sdk::serde_json::to_value(out)
            .map(Some)
            .map_err(|e| Error::msg(e.to_string()))
    }
}

mod serde_json_value {
    pub use eddy_sdk::serde_json::Value;
}

eddy_sdk::export_window!(Sessions);
