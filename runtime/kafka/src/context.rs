//! [`EddyContext`]: the client context of Eddy's consumers and producers:
//! librdkafka's log lines and errors go to `tracing` (so `--log-level` and
//! `--log-format json` apply to them), and a producer's delivery failures
//! are kept for the sink to report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

/// The context of one client; `role` (`source`, `sink`) names it in logs.
#[derive(Debug)]
pub struct EddyContext {
    role: &'static str,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// Per (topic, partition), from librdkafka's statistics (with
    /// `statistics.interval.ms` set): the last stable offset, which is the
    /// end a read_committed consumer reads to.
    ends: Mutex<HashMap<(String, i32), i64>>,
    /// A consumer's rebalance hook, when one is set.
    rebalance: OnceLock<Box<dyn RebalanceHook>>,
}

/// A consumer group rebalance, as [`RebalanceHook::rebalance`] gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    /// Partitions are added to this member.
    Assign,
    /// Partitions are taken from this member; `lost: true` when it was
    /// cut off from the group (its session expired) rather than asked to
    /// give them up.
    Revoke {
        /// The assignment was lost, not handed over.
        lost: bool,
    },
    /// The rebalance failed (librdkafka's error code).
    Error(RDKafkaRespErr),
}

/// Code run by a consumer when its group rebalances, on the thread that
/// polls it. It must carry out the change itself: call
/// [`Consumer::incremental_assign`] / [`Consumer::incremental_unassign`]
/// (cooperative protocol) with `partitions`, or [`Consumer::assign`] /
/// [`Consumer::unassign`] (eager), as [`RebalanceProtocol`] says.
pub trait RebalanceHook: Send + Sync + 'static {
    /// Called with the partitions concerned.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<EddyContext>,
        kind: RebalanceKind,
        partitions: &mut TopicPartitionList,
    );
}

impl std::fmt::Debug for dyn RebalanceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebalanceHook")
    }
}

impl EddyContext {
    /// A context for the client playing `role`.
    pub fn new(role: &'static str) -> EddyContext {
        EddyContext {
            role,
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            ends: Mutex::new(HashMap::new()),
            rebalance: OnceLock::new(),
        }
    }

    /// Sets the consumer's rebalance hook (once; a second call is
    /// ignored). Without one, rebalances assign and revoke as librdkafka
    /// decides.
    pub fn set_rebalance(&self, hook: Box<dyn RebalanceHook>) {
        let _ = self.rebalance.set(hook);
    }

    /// The end (last stable offset) of `topic`/`partition` as the latest
    /// statistics saw it, if any yet.
    pub fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let ends = self.ends.lock().ok()?;
        ends.get(&(topic.to_string(), partition)).copied()
    }

    /// Records whose delivery failed so far, and the first failure's
    /// reason.
    pub fn delivery_failures(&self) -> (u64, Option<String>) {
        let n = self.failed.load(Ordering::Acquire);
        let first = self.first_failure.lock().map(|f| f.clone()).unwrap_or(None);
        (n, first)
    }
}

impl ClientContext for EddyContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let role = self.role;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!("Kafka {role}: {fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!("Kafka {role}: {fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!("Kafka {role}: {fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!("Kafka {role}: {fac}: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Ok(mut ends) = self.ends.lock() else {
            return;
        };
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // -1: the internal "unassigned" partition; a negative
                // offset: not known yet.
                if *id >= 0 && p.ls_offset >= 0 {
                    ends.insert((name.clone(), *id), p.ls_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            // The end of a partition: not an error (`until_end` uses it).
            return;
        }
        // librdkafka retries by itself (reconnects with backoff); what it
        // reports here is for the user to see, e.g. an unreachable broker.
        tracing::warn!("Kafka {}: {error}: {reason} (retrying)", self.role);
    }
}

impl ConsumerContext for EddyContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let kind = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => RebalanceKind::Assign,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => RebalanceKind::Revoke {
                lost: consumer.assignment_lost(),
            },
            e => RebalanceKind::Error(e),
        };
        if let Some(hook) = self.rebalance.get() {
            hook.rebalance(consumer, kind, tpl);
            return;
        }
        // What librdkafka does without a callback.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match (kind, cooperative) {
            (RebalanceKind::Assign, true) => consumer.incremental_assign(tpl),
            (RebalanceKind::Assign, false) => consumer.assign(tpl),
            (_, true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::warn!("Kafka {}: rebalance ({kind:?}): {e}", self.role);
        }
    }
}

impl ProducerContext for EddyContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut first) = self.first_failure.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The member id the group coordinator gave `consumer` (empty before it
/// joined). A member that was dropped from the group (its session expired)
/// and joins again gets a new one.
pub fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> String {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live client handle of `consumer`, borrowed for
    // this call; `rd_kafka_memberid` returns NULL or a string allocated
    // by librdkafka that the caller frees with `rd_kafka_mem_free`.
    unsafe {
        let p = rdkafka::bindings::rd_kafka_memberid(rk);
        if p.is_null() {
            return String::new();
        }
        let id = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, p.cast());
        id
    }
}
