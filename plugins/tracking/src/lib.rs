//! Parcel tracking: per package (the key), where it was last scanned, how
//! many times it changed location, how long since its previous scan, and
//! whether it is delivered. Emits one status line per scan; a scan after
//! delivery is an error, so it goes to the dead-letter output.
//! See README.md for the exact shapes.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::{Deserialize, Serialize};

/// Everything known about the package after its latest scan.
const TRACK: Value<Track> = Value::new("track");

#[derive(Serialize, Deserialize)]
struct Track {
    location: String,
    ts: i64,
    hops: u64,
    delivered: bool,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    max_gap_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_gap_ms: 24 * 60 * 60 * 1000,
        }
    }
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Scanned,
    Delivered,
}

/// One input line.
#[derive(Deserialize)]
struct Scan {
    package: String,
    location: String,
    status: Status,
    ts: Option<i64>,
}

#[derive(Serialize)]
struct Update<'a> {
    package: &'a str,
    location: &'a str,
    previous: Option<String>,
    hops: u64,
    gap_ms: Option<i64>,
    delayed: bool,
    delivered: bool,
}

struct Tracking {
    max_gap_ms: i64,
}

impl Operator for Tracking {
    fn init(config: Config) -> Result<Self, Error> {
        let Settings { max_gap_ms } = config.parse()?;
        if max_gap_ms < 0 {
            return Err(Error::msg("max_gap_ms must be zero or more"));
        }
        Ok(Tracking { max_gap_ms })
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let scan: Scan = event.json()?;
        let ts = event.time.or(scan.ts).ok_or_else(|| {
            Error::msg(format!(
                "scan of package {} has no time: no pipeline time and no `ts` field",
                scan.package
            ))
        })?;

        let last = TRACK.get()?;
        if last.as_ref().is_some_and(|last| last.delivered) {
            return Err(Error::msg(format!(
                "package {} already delivered",
                scan.package
            )));
        }

        let hops = match &last {
            Some(last) if last.location != scan.location => last.hops + 1,
            Some(last) => last.hops,
            None => 0,
        };
        let gap_ms = last.as_ref().map(|last| ts - last.ts);
        let delayed = gap_ms.is_some_and(|gap| gap > self.max_gap_ms);
        let delivered = scan.status == Status::Delivered;

        TRACK.set(&Track {
            location: scan.location.clone(),
            ts,
            hops,
            delivered,
        })?;

        let update = Update {
            package: &scan.package,
            location: &scan.location,
            previous: last.map(|last| last.location),
            hops,
            gap_ms,
            delayed,
            delivered,
        };
        emit(event.key, &update)
    }
}

eddy_sdk::export_operator!(Tracking);
