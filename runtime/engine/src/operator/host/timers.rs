//! `eddy:operator/timers` (`wit/timers.wit`): named event-time timers of
//! the current key, and the watermark. Not served yet: the watermark reads
//! its minimum and every other call is refused.

use crate::operator::wasm::bindings::eddy::operator::timers;

use super::{trap, HostError, OpCtx};

impl timers::Host for OpCtx {
    fn watermark(&mut self) -> wasmtime::Result<i64> {
        Ok(i64::MIN)
    }
    fn set(&mut self, _name: String, _at: i64) -> wasmtime::Result<()> {
        Err(trap(HostError::NoTimers))
    }
    fn clear(&mut self, _name: String) -> wasmtime::Result<bool> {
        Err(trap(HostError::NoTimers))
    }
    fn get(&mut self, _name: String) -> wasmtime::Result<Option<i64>> {
        Err(trap(HostError::NoTimers))
    }
    fn list(&mut self) -> wasmtime::Result<Vec<timers::Timer>> {
        Err(trap(HostError::NoTimers))
    }
}
