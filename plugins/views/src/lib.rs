//! First half of the co-watch recommendation chain (views → recommend).
//!
//! Per user (the key), keeps the user's last `history` views. For each view
//! it emits, keyed by the viewed ITEM, the user's previous distinct items, so
//! the next operator (`recommend`) sees every viewer of an item under that
//! item's key. See README.md for the exact shapes.

use eddy_sdk::{emit, Config, Error, Event, List, Operator};
use serde::{Deserialize, Serialize};

/// The user's last views (item ids), oldest first, at most `history` long.
const HISTORY: List<String> = List::new("history");

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    history: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { history: 20 }
    }
}

/// One input line. Other fields (such as `ts`) are ignored.
#[derive(Deserialize)]
struct View {
    user: String,
    item: String,
}

#[derive(Serialize)]
struct Viewed<'a> {
    user: &'a str,
    item: &'a str,
    previous: Vec<String>,
}

struct Views {
    history: u32,
}

impl Operator for Views {
    fn init(config: Config) -> Result<Self, Error> {
        let Settings { history } = config.parse()?;
        if history == 0 {
            return Err(Error::msg("history must be at least 1"));
        }
        Ok(Views { history })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let view: View = event.json()?;
        if view.item.is_empty() {
            return Err(Error::msg(format!(
                "view of user {} has an empty `item`",
                view.user
            )));
        }

        // Most recent first, each item once, without the item being viewed.
        let mut previous: Vec<String> = Vec::new();
        for seen in HISTORY.all()?.into_iter().rev() {
            if seen != view.item && !previous.contains(&seen) {
                previous.push(seen);
            }
        }
        previous.truncate(self.history as usize);

        emit(
            &view.item,
            &Viewed {
                user: &view.user,
                item: &view.item,
                previous,
            },
        )?;

        HISTORY.push(&view.item)?;
        HISTORY.trim(self.history);
        Ok(())
    }
}

eddy_sdk::export_operator!(Views);
