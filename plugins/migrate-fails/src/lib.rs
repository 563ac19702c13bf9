//! A counter version whose `migrate` always fails: a swap to it must be
//! refused (the host tries the migration on committed keys first) and leave
//! the running version and its state in place.

use eddy_sdk::{Config, Error, Event, Operator};

struct MigrateFails;

impl Operator for MigrateFails {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(MigrateFails)
    }

    fn migrate(&mut self, _previous: &str) -> Result<(), Error> {
        Err(Error::msg("cannot read the old `totals` format"))
    }

    fn handle(&mut self, _event: Event) -> Result<(), Error> {
        Err(Error::msg(
            "this version never handles an event in the tests",
        ))
    }
}

eddy_sdk::export_operator!(MigrateFails);
