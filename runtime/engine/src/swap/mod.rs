//! Hot swap: the versions of each operator, and a [`Controller`] that
//! prepares a swap off the hot path and hands it to the coordinator.
//!
//! A swap goes in three steps:
//!
//! 1. **Prepare** (on the caller's thread, the pipeline keeps running): read
//!    and compile the component, type-check it against the operator world,
//!    instantiate it and call `init` with the operator's config; when it
//!    exports `migrate`, try the migration on a sample of committed keys
//!    (writes discarded). Any failure refuses the swap with the reason and
//!    changes nothing. Then keep a copy of the component in the state
//!    directory and make one initialised instance per worker.
//! 2. **Switch** (the coordinator, see `runner`): a barrier in the event
//!    stream. Every event routed before it is handled by the old version,
//!    every event after it by the new one. For the first operator of a chain
//!    the barrier is a message in each worker's inbox, between two batches;
//!    for a later operator the coordinator first waits until every event in
//!    flight is handled. Each worker hands the old instance's state cache to
//!    the new instance, which is an O(1) exchange.
//! 3. **Commit**: the next checkpoint records the new active version with
//!    the state and input position in one transaction; the swap is reported
//!    done once that is durable, so a restart comes back on it.
//!
//! State written by one version and first touched by another is migrated
//! lazily (see `migrate` in `wit/world.wit`): each key carries the
//!
//! # Layout
//!
//! - [`versions`]: the versions of each operator kept in the state
//!   directory, and which one a (re)start runs ([`resolve`]).
//! - [`controller`]: [`Controller`], step 1 (prepare), for the control
//!   endpoint and `--watch`.
//! - [`watch`]: `eddy run --watch`.
//! - here: what crosses from the controller to the coordinator for step 2
//!   ([`Prepared`], [`Claim`]) and what comes back ([`SwapReport`],
//!   [`NotDurable`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::operator::Operator;

mod controller;
mod versions;
mod watch;

pub use controller::{Asker, Controller, Refused};
pub use versions::{resolve, ResolveError, Version, Versions};

/// Why a swap that was handed to the coordinator did not become durable
/// (told to the asker, which refuses the swap with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotDurable {
    /// The asker gave the request up before the switch.
    #[error("the request was given up before the switch; nothing changed")]
    GivenUp,
    /// The checkpoint recording the swap failed (its error).
    #[error("the checkpoint recording the swap failed: {0}")]
    CheckpointFailed(String),
    /// The pipeline stopped before a checkpoint recorded the swap.
    #[error("the pipeline stopped before the swap was made durable")]
    Stopped,
    /// The pipeline failed before a checkpoint recorded the swap (its
    /// error).
    #[error("the pipeline failed before the swap was made durable: {0}")]
    Failed(String),
}

/// What a completed swap did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapReport {
    /// The operator.
    pub operator: String,
    /// The version that ran before.
    pub from: Version,
    /// The version that runs now.
    pub to: Version,
    /// Input line after which the new version handles events: every event
    /// of a line up to it went to the old version.
    pub barrier_line: u64,
    /// Time to read and compile the component, in milliseconds.
    pub compile_ms: f64,
    /// Time to check it (init, trial migration) and make the instances.
    pub prepare_ms: f64,
    /// The component exports `migrate`: keys migrate on first touch.
    pub migrates: bool,
}

/// A swap ready for the coordinator: one initialised instance per worker.
pub struct Prepared {
    pub stage: usize,
    pub generation: u32,
    pub version: Version,
    pub instances: Vec<Box<dyn Operator>>,
    pub report: SwapReport,
    /// Where the coordinator reports the swap durable (or why it failed).
    pub reply: Sender<Result<SwapReport, NotDurable>>,
    /// Decided once: switched by the coordinator, or given up by its asker.
    pub claim: Arc<Claim>,
}

/// Who decides a prepared swap, once: the coordinator at the barrier
/// ([`Claim::switch`]), or the asker that stopped waiting before it
/// ([`Claim::abandon`]), whichever comes first. So a swap its client gave
/// up on is never carried out later, however long the coordinator took to
/// reach it.
#[derive(Debug, Default)]
pub struct Claim(std::sync::atomic::AtomicU8);

impl Claim {
    const PENDING: u8 = 0;
    const SWITCHED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The coordinator takes the swap; `false` if its asker gave it up.
    pub fn switch(&self) -> bool {
        self.0
            .compare_exchange(
                Self::PENDING,
                Self::SWITCHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The asker gives the swap up; `false` if it was switched already.
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(
                Self::PENDING,
                Self::ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// Requests from the controller to the coordinator.
pub enum Command {
    Swap(Prepared),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_decided_once_by_whoever_comes_first() {
        let switched = Claim::default();
        assert!(switched.switch());
        assert!(!switched.abandon(), "too late to give up a switched swap");
        assert!(!switched.switch(), "switched once only");

        let abandoned = Claim::default();
        assert!(abandoned.abandon());
        assert!(!abandoned.switch(), "a swap given up is never carried out");
        assert!(!abandoned.abandon());
    }

    #[test]
    fn why_a_swap_is_not_durable_reads_as_before() {
        assert_eq!(
            NotDurable::GivenUp.to_string(),
            "the request was given up before the switch; nothing changed"
        );
        assert_eq!(
            NotDurable::Failed("disk full".into()).to_string(),
            "the pipeline failed before the swap was made durable: disk full"
        );
    }
}
