//! Kafka clients for Eddy, on librdkafka (the `rdkafka` crate, built from
//! its bundled source), and the real broker its tests run against.
//!
//! # Layout
//!
//! - [`config`]: client settings for exactly-once: a transactional
//!   producer and a `read_committed` consumer, with the user's client
//!   properties (security settings included) passed through unchanged
//!   unless they contradict what exactly-once needs.
//! - [`context`]: the client context: librdkafka's logs to `tracing`,
//!   delivery failures counted.
//! - [`admin`]: topic creation, for tests and for a local demo.
//! - [`partition`]: which partition a key goes to, as Kafka's producers
//!   place it (murmur2 for Java clients, CRC32 for librdkafka's default).
//! - [`testing`]: the Apache Kafka broker of `tests/kafka/broker.sh`, as
//!   tests find, start, restart and kill it.
//!
//! The transaction calls of `rdkafka` (`init_transactions`,
//! `commit_transaction`, ...) block the calling thread until the broker
//! answers or the timeout passes: on tokio, call them from a blocking
//! thread (`spawn_blocking`), not from a worker of the runtime.

pub mod admin;
pub mod config;
pub mod context;
pub mod partition;
pub mod testing;

pub use context::EddyContext;
pub use rdkafka;

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client property the user gave contradicts a setting exactly-once
    /// needs (for example `isolation.level=read_uncommitted` on the
    /// consumer).
    #[error("Kafka client property `{key}` = `{given}` conflicts with exactly-once, which needs `{required}`")]
    Conflict {
        key: String,
        required: String,
        given: String,
    },
    /// The client library or the broker refused an operation.
    #[error("Kafka {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("Kafka: creating topic `{topic}` failed: {code}")]
    CreateTopic {
        topic: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
}

impl Error {
    pub(crate) fn kafka(
        what: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }
}
