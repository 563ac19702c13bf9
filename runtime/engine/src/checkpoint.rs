//! The checkpoint writer: a thread (`eddy-commit`) that makes each
//! [`Checkpoint`] durable in one redb write transaction while the workers
//! go on handling events.
//!
//! One commit at a time: the coordinator hands over a checkpoint with
//! [`Writer::submit`] only once the previous one is done ([`Writer::wait`]
//! or [`Writer::poll`]). Each checkpoint carries acknowledgements (the
//! swaps it records), given back with its outcome, so a swap is reported
//! done only once the checkpoint that records it is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::state::{Checkpoint, Store, StoreError};
use crate::stats::Live;

/// What makes a checkpoint durable: the state directory, or a stand-in in
/// tests.
pub trait Commit: Send + 'static {
    /// Writes `cp` in one transaction.
    fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError>;
}

impl Commit for Store {
    fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        Store::commit(self, cp)
    }
}

/// A [`Commit`] that also counts its checkpoints, their write time and
/// size in [`Live`] (for `/metrics`), on the committer thread.
pub struct Counted<C> {
    /// What commits.
    pub inner: C,
    /// Where the counts go.
    pub live: Arc<Live>,
}

impl<C: Commit> Commit for Counted<C> {
    fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let r = self.inner.commit(cp);
        let micros = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let c = &self.live.checkpoints;
        match &r {
            Ok(()) => {
                let bytes: usize = cp
                    .writes
                    .iter()
                    .map(|w| w.record.as_ref().map_or(0, Vec::len))
                    .sum();
                c.count.fetch_add(1, Ordering::Relaxed);
                c.micros.fetch_add(micros, Ordering::Relaxed);
                c.max_micros.fetch_max(micros, Ordering::Relaxed);
                c.writes
                    .fetch_add(cp.writes.len() as u64, Ordering::Relaxed);
                c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                c.last_ms.store(now, Ordering::Relaxed);
            }
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }
}

/// Why a checkpoint did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The write transaction failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The committer thread is gone (it panicked).
    #[error("the committer stopped")]
    Stopped,
}

/// A finished commit: the acknowledgements handed over with its
/// checkpoint, and whether it is durable.
#[derive(Debug)]
pub struct Done<T> {
    /// What was handed to [`Writer::submit`] with the checkpoint.
    pub acks: Vec<T>,
    /// `Ok` once the checkpoint is durable.
    pub result: Result<(), CheckpointError>,
}

/// The committer thread and the one checkpoint it may be writing.
pub struct Writer<T> {
    /// Checkpoints to the committer (`None` once it is told to stop).
    to_commit: Option<Sender<Checkpoint>>,
    /// Each commit's outcome, in order.
    done: Receiver<Result<(), StoreError>>,
    /// The acknowledgements of the checkpoint being committed, if any.
    pending: Option<Vec<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T> Writer<T> {
    /// Starts the committer thread on `store`.
    pub fn start(store: impl Commit) -> std::io::Result<Writer<T>> {
        let (to_commit, commits) = bounded::<Checkpoint>(0);
        let (done_tx, done) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("eddy-commit".into())
            .spawn(move || {
                for cp in commits {
                    if done_tx.send(store.commit(&cp)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Writer {
            to_commit: Some(to_commit),
            done,
            pending: None,
            thread: Some(thread),
        })
    }

    /// Hands `cp` to the committer, with `acks` to give back once it is
    /// done. The previous checkpoint must be done (see [`Writer::wait`]).
    pub fn submit(&mut self, cp: Checkpoint, acks: Vec<T>) -> Result<(), CheckpointError> {
        assert!(
            self.pending.is_none(),
            "one commit at a time: wait for the previous checkpoint first"
        );
        let sent = self.to_commit.as_ref().map(|tx| tx.send(cp).map_err(drop));
        match sent {
            Some(Ok(())) => {
                self.pending = Some(acks);
                Ok(())
            }
            _ => Err(CheckpointError::Stopped),
        }
    }

    /// The checkpoint being committed, if it is done (does not wait).
    pub fn poll(&mut self) -> Option<Done<T>> {
        self.pending.as_ref()?;
        let result = match self.done.try_recv() {
            Ok(r) => r.map_err(CheckpointError::from),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(CheckpointError::Stopped),
        };
        let acks = self.pending.take().unwrap_or_default();
        Some(Done { acks, result })
    }

    /// Waits for the checkpoint being committed, if any.
    pub fn wait(&mut self) -> Option<Done<T>> {
        let acks = self.pending.take()?;
        let result = match self.done.recv() {
            Ok(r) => r.map_err(CheckpointError::from),
            Err(_) => Err(CheckpointError::Stopped),
        };
        Some(Done { acks, result })
    }

    /// Stops the committer and joins it; the acknowledgements of a
    /// checkpoint not waited for are given back (their commit may or may
    /// not have finished: they were not told it did).
    pub fn stop(&mut self) -> Vec<T> {
        self.to_commit = None;
        if let Some(t) = self.thread.take() {
            // The commit in progress, if any, finishes first.
            let _ = t.join();
        }
        self.pending.take().unwrap_or_default()
    }
}

impl<T> Drop for Writer<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::state::{SourcePos, StateWrite};

    /// Records what it commits; fails the commits whose position is odd.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u64>>>);

    impl Commit for Log {
        fn commit(&self, cp: &Checkpoint) -> Result<(), StoreError> {
            let line = cp.source.as_ref().map_or(0, |(_, p)| p.line);
            if line % 2 == 1 {
                return Err(StoreError::Damaged {
                    dir: "test".into(),
                    detail: format!("commit at line {line} refused"),
                });
            }
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    fn at(line: u64) -> Checkpoint {
        Checkpoint {
            source: Some((
                "in".into(),
                SourcePos {
                    offset: line * 10,
                    line,
                },
            )),
            ..Checkpoint::default()
        }
    }

    #[test]
    fn checkpoints_are_committed_one_at_a_time_in_order_with_their_acks() {
        let log = Log::default();
        let mut w = Writer::start(log.clone()).unwrap();
        assert!(w.poll().is_none() && w.wait().is_none(), "nothing pending");
        w.submit(at(2), vec!["a", "b"]).unwrap();
        let done = w.wait().unwrap();
        assert_eq!(done.acks, ["a", "b"]);
        assert!(done.result.is_ok());
        w.submit(at(4), vec![]).unwrap();
        // `poll` never waits: it answers `None` until the commit is done.
        let done = loop {
            if let Some(d) = w.poll() {
                break d;
            }
            std::thread::yield_now();
        };
        assert!(done.acks.is_empty() && done.result.is_ok());
        assert_eq!(*log.0.lock().unwrap(), [2, 4]);
        assert!(w.stop().is_empty());
    }

    #[test]
    #[should_panic(expected = "one commit at a time")]
    fn a_second_checkpoint_before_the_first_is_done_is_a_bug() {
        let mut w = Writer::start(Log::default()).unwrap();
        w.submit(at(2), vec![1]).unwrap();
        let _ = w.submit(at(4), vec![2]);
    }

    #[test]
    fn a_failed_commit_gives_its_acks_back_with_the_error() {
        let log = Log::default();
        let mut w = Writer::start(log.clone()).unwrap();
        w.submit(at(3), vec!["swap"]).unwrap();
        let done = w.wait().unwrap();
        assert_eq!(done.acks, ["swap"]);
        let err = done.result.unwrap_err();
        assert_eq!(
            err.to_string(),
            StoreError::Damaged {
                dir: "test".into(),
                detail: "commit at line 3 refused".into()
            }
            .to_string()
        );
        assert!(log.0.lock().unwrap().is_empty());
        // The writer goes on: a later checkpoint commits.
        w.submit(at(6), vec![]).unwrap();
        assert!(w.wait().unwrap().result.is_ok());
        assert_eq!(*log.0.lock().unwrap(), [6]);
    }

    #[test]
    fn stopping_gives_back_the_acks_of_a_checkpoint_not_waited_for() {
        let mut w = Writer::start(Log::default()).unwrap();
        w.submit(at(2), vec!["late"]).unwrap();
        assert_eq!(w.stop(), ["late"]);
        assert!(matches!(
            w.submit(at(4), vec![]),
            Err(CheckpointError::Stopped)
        ));
    }

    #[test]
    fn the_store_commits_state_and_position_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let mut w = Writer::start(store.clone()).unwrap();
        let mut cp = at(8);
        cp.writes.push(StateWrite {
            operator: "op".into(),
            key: "k".into(),
            record: None,
            lists: Vec::new(),
            maps: Vec::new(),
        });
        w.submit(cp, vec![()]).unwrap();
        assert!(w.wait().unwrap().result.is_ok());
        assert_eq!(
            store.source_pos("in").unwrap(),
            Some(SourcePos {
                offset: 80,
                line: 8
            })
        );
    }
}
