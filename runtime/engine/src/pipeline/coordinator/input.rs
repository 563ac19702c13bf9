//! The input side of the coordinator: chunks from the reader cut into
//! lines, each decoded and routed to its worker's batch (or dead-lettered),
//! batches sent as they fill, within the cap on batches in flight.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Result};
use crossbeam_channel::Receiver;

use super::{Coordinator, BATCH, MAX_INFLIGHT_PER_WORKER};
use crate::config::Input;
use crate::route::route;
use crate::sink::format::{push_field, push_string_field};
use crate::sink::SinkMsg;
use crate::source::{decode, Chunk, Decoded, Verdict};
use crate::worker::{Batch, Msg};

impl Coordinator {
    /// Handles one chunk from the reader; `true` at the end of the input.
    pub(super) fn chunk(&mut self, chunk: Chunk, chunks: &Receiver<Chunk>) -> Result<bool> {
        match chunk {
            Chunk::Eof => {
                // The true end of the input (never with `--follow`): the
                // watermark goes to +infinity, so every timer fires.
                let w = self.watermark.end();
                self.mark(w);
                return Ok(true);
            }
            Chunk::Error(e) => bail!("reading the input: {e}"),
            Chunk::Incomplete { len, .. } => {
                // Left unread: the checkpointed offset stays before it (at
                // its offset, or before a byte-order mark skipped at 0).
                let line = self.pos.line + 1;
                self.summary.incomplete_line = Some(line);
                let name = match &self.p.input {
                    Input::File(path) => path.display().to_string(),
                    Input::Stdin | Input::Kafka(_) => "stdin".into(),
                };
                tracing::warn!(
                    "{name} line {line}: incomplete last line (no newline yet, {len} bytes) left for a later run"
                );
            }
            Chunk::Oversized { offset, len } => {
                self.resumed_mid_line = false;
                self.summary.lines += 1;
                self.pos.line += 1;
                self.dead_line(
                    self.pos.line,
                    &format!(
                        "line is {len} bytes, longer than max_line_bytes = {}",
                        self.p.max_line_bytes
                    ),
                    b"",
                );
                self.pos.offset = offset + len;
            }
            Chunk::Lines { data, offset } => {
                if self.p.watermark.idle_timeout_ms.is_some() {
                    self.last_input_ms = self.clock.now_ms();
                }
                let mut start = 0usize;
                while start < data.len() {
                    let end =
                        memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i + 1);
                    self.line(&data[start..end])?;
                    self.pos.offset = offset + end as u64;
                    start = end;
                    if let Some(n) = self.p.checkpoint_events {
                        if self.since_checkpoint >= n {
                            self.checkpoint()?;
                        }
                    }
                }
                if chunks.is_empty() {
                    self.flush_batches()?;
                }
                if Instant::now() >= self.next_checkpoint {
                    self.checkpoint()?;
                }
            }
        }
        self.live.lines_read.store(self.pos.line, Ordering::Relaxed);
        self.live
            .bytes_read
            .store(self.pos.offset, Ordering::Relaxed);
        Ok(false)
    }

    /// Decodes and routes one line (with its `\n`, if any).
    pub(super) fn line(&mut self, raw: &[u8]) -> Result<()> {
        if std::mem::take(&mut self.resumed_mid_line) && (raw == b"\n" || raw == b"\r\n") {
            return Ok(());
        }
        self.summary.lines += 1;
        self.pos.line += 1;
        let mut line = raw.strip_suffix(b"\n").unwrap_or(raw);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if line.len() > self.p.max_line_bytes {
            let reason = format!(
                "line is {} bytes, longer than max_line_bytes = {}",
                line.len(),
                self.p.max_line_bytes
            );
            self.dead_line(self.pos.line, &reason, b"");
            return Ok(());
        }
        match decode(line, &self.p.key_field, self.p.time_field.as_deref()) {
            Ok(d) => {
                let Some(late) = self.late(&d, line) else {
                    return Ok(());
                };
                let w = route(&d.key, self.workers.count());
                self.pending[w].push(0, &d.key, line, d.time, self.pos.line);
                if late {
                    self.pending[w].flag_last_late();
                }
                self.since_checkpoint += 1;
                // After the event that moves it, in every worker's stream.
                if let Some(wm) = d.time.and_then(|t| self.watermark.observe(t)) {
                    self.mark(wm);
                }
                if self.pending[w].len() >= BATCH {
                    self.send_batch(w)?;
                }
            }
            Err(e) => self.dead_line(self.pos.line, &e.to_string(), line),
        }
        Ok(())
    }

    /// Applies the late policy to event `d` (input line `line`) before it
    /// is routed: `Some(flagged late)` to handle it, `None` when it was
    /// dead-lettered or dropped (see [`crate::source::Verdict`]).
    fn late(&mut self, d: &Decoded, line: &[u8]) -> Option<bool> {
        match self.watermark.judge(d.time) {
            Verdict::OnTime => Some(false),
            Verdict::Deliver => Some(true),
            Verdict::Drop => {
                self.summary.late_dropped += 1;
                None
            }
            Verdict::DeadLetter(reason) => {
                self.summary.late_dead_lettered += 1;
                let rec = serde_json::json!({
                    "line": self.pos.line,
                    "key": &*d.key,
                    "time": d.time,
                    "error": reason,
                });
                let mut b = serde_json::to_vec(&rec).expect("json");
                b.pop();
                b.push(b',');
                push_field(&mut b, "payload", line);
                b.extend_from_slice(b"}\n");
                let _ = self.sink.send(SinkMsg::Dead(b));
                None
            }
        }
    }

    /// Advances the watermark to `w` at this point of the input, in every
    /// worker's batch.
    pub(super) fn mark(&mut self, w: i64) {
        self.live.watermark.store(w, Ordering::Relaxed);
        for b in &mut self.pending {
            b.mark_here(w, self.pos.line, true);
        }
    }

    /// Dead-letters input line `line`: `payload` as a JSON string, or as
    /// `payload_base64` when it is not UTF-8 (never altered).
    pub(super) fn dead_line(&mut self, line: u64, reason: &str, payload: &[u8]) {
        self.summary.bad_lines += 1;
        let rec = serde_json::json!({
            "line": line,
            "error": reason,
        });
        let mut b = serde_json::to_vec(&rec).expect("json");
        b.pop();
        b.push(b',');
        push_string_field(&mut b, "payload", payload);
        b.extend_from_slice(b"}\n");
        // A stopped sink is reported at the next checkpoint.
        let _ = self.sink.send(SinkMsg::Dead(b));
    }

    pub(super) fn send_batch(&mut self, w: usize) -> Result<()> {
        let cap = MAX_INFLIGHT_PER_WORKER * self.workers.count();
        self.wait_inflight(|n| n < cap)?;
        let b = std::mem::replace(&mut self.pending[w], Batch::with_capacity(BATCH));
        self.workers.inflight.add();
        if self.workers.send(w, Msg::batch(b)).is_err() {
            // The worker ended with an error (a corrupt state record, say):
            // report it, not just that it stopped.
            return Err(self.worker_failure());
        }
        Ok(())
    }

    /// Sends every batch being filled that holds an event or a swap.
    pub(super) fn flush_batches(&mut self) -> Result<()> {
        for w in 0..self.pending.len() {
            if !self.pending[w].is_empty() || self.pending[w].carries_cut() {
                self.send_batch(w)?;
            }
        }
        Ok(())
    }

    /// Waits until the in-flight batch count satisfies `ok` (woken by the
    /// workers, no spinning), failing if a worker stopped.
    pub(super) fn wait_inflight(&mut self, ok: impl Fn(usize) -> bool) -> Result<()> {
        match self.workers.inflight.wait_until(ok) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.worker_failure()),
        }
    }
}
