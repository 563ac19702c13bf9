//! A version whose `init` always fails: a swap to it must be refused and
//! leave the running version in place.

use eddy_sdk::{Config, Error, Event, Operator};

struct Refuse;

impl Operator for Refuse {
    fn init(_config: Config) -> Result<Self, Error> {
        Err(Error::msg(
            "this version refuses to start: no database url configured",
        ))
    }

    fn handle(&mut self, _event: Event) -> Result<(), Error> {
        Err(Error::msg("never initialised"))
    }
}

eddy_sdk::export_operator!(Refuse);
