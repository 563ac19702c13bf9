//! [`EddyContext`]: the client context of Eddy's consumers and producers:
//! librdkafka's log lines and errors go to `tracing` (so `--log-level` and
//! `--log-format json` apply to them), and a producer's delivery failures
//! are kept for the sink to report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::statistics::Statistics;

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
}

impl EddyContext {
    /// A context for the client playing `role`.
    pub fn new(role: &'static str) -> EddyContext {
        EddyContext {
            role,
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            ends: Mutex::new(HashMap::new()),
        }
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

impl ConsumerContext for EddyContext {}

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
