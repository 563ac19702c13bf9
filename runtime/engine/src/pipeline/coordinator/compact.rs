//! Compaction of the state database while the pipeline runs (`[state]
//! compact`): at a quiet moment the coordinator looks at how much of
//! `state.redb` is free, and when it is enough, has the workers let go of
//! their readers and compacts it, the input standing still meanwhile.
//!
//! redb compacts only a database nothing reads or writes
//! (`Database::compact` takes it `&mut` and refuses while a transaction is
//! open). Here no transaction is open at that moment: the previous commit
//! is done (the committer is idle), the workers have handled every event
//! sent and dropped their readers ([`Msg::DropReaders`]), and no new
//! transaction can begin while [`Store::compact_now`] holds the database.
//! A reader held elsewhere (a state query, a snapshot being copied, a swap
//! being prepared) makes it give up without change; it is tried again
//! soon.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use crossbeam_channel::bounded;

use super::Coordinator;
use crate::worker::Msg;

/// After a compaction given up for an open reader, the next try.
const RETRY_BUSY: Duration = Duration::from_secs(5);

impl Coordinator {
    /// When compaction is on and due, and the input is `quiet` (nothing
    /// waiting to be read), looks at the state database's free space and
    /// compacts it when enough is free.
    pub(super) fn maybe_compact(&mut self, quiet: bool) -> Result<()> {
        let Some(policy) = self.p.compact else {
            return Ok(());
        };
        if !quiet || Instant::now() < self.next_compact {
            return Ok(());
        }
        self.next_compact = Instant::now() + policy.every;
        let store = self.controller.store().clone();
        let live = self.live.clone();
        let space = store.free_space()?;
        if space.file == 0 || (space.free as f64) < policy.min_free * space.file as f64 {
            live.compactions.not_worth.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "state directory {}: {} of {} bytes of state.redb free, under the {:.0}% that starts a compaction",
                store.dir().display(),
                space.free,
                space.file,
                policy.min_free * 100.0
            );
            return Ok(());
        }
        // The input stands still from here until the workers are sent
        // anything again.
        let stalled = Instant::now();
        self.flush_batches()?;
        self.wait_inflight(|n| n == 0)?;
        self.wait_commit()?;
        let mut replies = Vec::with_capacity(self.workers.count());
        for w in 0..self.workers.count() {
            let (tx, rx) = bounded(1);
            if self.workers.send(w, Msg::DropReaders(tx)).is_err() {
                return Err(self.worker_failure());
            }
            replies.push(rx);
        }
        for rx in replies {
            if rx.recv().is_err() {
                return Err(self.worker_failure());
            }
        }
        let after = store
            .compact_now()
            .map_err(|e| anyhow!(e).context("compacting the state database"))?;
        let took = stalled.elapsed();
        match after {
            Some(after) => {
                live.compactions.done(space.file, after, took);
                tracing::info!(
                    "state directory {}: compacted state.redb from {} to {} bytes ({:.0}% was free) in {:.1} ms, the input stalled meanwhile",
                    store.dir().display(),
                    space.file,
                    after,
                    space.free as f64 * 100.0 / space.file as f64,
                    took.as_secs_f64() * 1e3
                );
            }
            None => {
                live.compactions.busy.fetch_add(1, Ordering::Relaxed);
                self.next_compact = Instant::now() + RETRY_BUSY.min(policy.every);
                tracing::debug!(
                    "state directory {}: compaction put off: a reader of the state is open (a state query, a snapshot or a swap being prepared)",
                    store.dir().display()
                );
            }
        }
        Ok(())
    }
}
