//! Second half of the co-watch recommendation chain (views → recommend).
//!
//! Per item (the key, set by `views`), counts the items its viewers had
//! watched before it. For each view it emits, keyed by the USER, the `top`
//! items most often co-watched with this one that the user has not just seen.
//! See README.md for the exact shapes.

use eddy_sdk::{emit, Config, Error, Event, Map, Operator};
use serde::{Deserialize, Serialize};

/// For this item: other item -> how many views of this item had it in
/// their viewer's history.
const CO_WATCHED: Map<u64> = Map::new("co_watched");

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    top: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { top: 3 }
    }
}

/// What `views` emits.
#[derive(Deserialize)]
struct Viewed {
    user: String,
    item: String,
    previous: Vec<String>,
}

#[derive(Serialize)]
struct Suggestion<'a> {
    user: &'a str,
    item: &'a str,
    suggest: Vec<String>,
}

struct Recommend {
    top: usize,
}

impl Operator for Recommend {
    fn init(config: Config) -> Result<Self, Error> {
        let Settings { top } = config.parse()?;
        if top == 0 {
            return Err(Error::msg("top must be at least 1"));
        }
        Ok(Recommend { top })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let viewed: Viewed = event.json()?;

        for other in viewed
            .previous
            .iter()
            .filter(|other| **other != viewed.item)
        {
            let count = CO_WATCHED.get(other)?.unwrap_or(0) + 1;
            CO_WATCHED.set(other, &count)?;
        }

        // Highest count first, ties by item name (entries come sorted by
        // name and the sort is stable, but say it explicitly).
        let mut ranked: Vec<(String, u64)> = CO_WATCHED
            .entries()?
            .into_iter()
            .filter(|(other, _)| *other != viewed.item && !viewed.previous.contains(other))
            .collect();
        ranked.sort_by(|(a, a_count), (b, b_count)| b_count.cmp(a_count).then_with(|| a.cmp(b)));
        let suggest = ranked
            .into_iter()
            .take(self.top)
            .map(|(other, _)| other)
            .collect();

        emit(
            &viewed.user,
            &Suggestion {
                user: &viewed.user,
                item: &viewed.item,
                suggest,
            },
        )
    }
}

eddy_sdk::export_operator!(Recommend);
