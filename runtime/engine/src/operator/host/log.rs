//! `eddy:operator/log` (`wit/log.wit`): an operator's log lines, tagged
//! with the operator and the key being handled (the version comes from the
//! worker's span).
//!
//! A `handle-batch` call handles many events and its log lines cannot be
//! told apart by event: a line logged during one is dropped and counted
//! ([`OpCtx::batch_logs`]), and the batch's result is then set aside and
//! the batch replayed event by event, where every line is logged again,
//! with its key (see `WasmOperator::run_batch`).

use crate::operator::wasm::bindings::eddy::operator::{log, types};

use super::{cap_reason, OpCtx};

impl types::Host for OpCtx {}

impl log::Host for OpCtx {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        if let Some(n) = &mut self.batch_logs {
            *n += 1;
            return Ok(());
        }
        let op = self.name();
        let key = self.current_key().unwrap_or("-");
        let max = self.limits().max_reason;
        let message = match message.len() > max {
            true => cap_reason(&message, max),
            false => message,
        };
        match level {
            types::Level::Trace => tracing::trace!(operator = %op, key, "{message}"),
            types::Level::Debug => tracing::debug!(operator = %op, key, "{message}"),
            types::Level::Info => tracing::info!(operator = %op, key, "{message}"),
            types::Level::Warn => tracing::warn!(operator = %op, key, "{message}"),
            types::Level::Error => tracing::error!(operator = %op, key, "{message}"),
        }
        Ok(())
    }
}
