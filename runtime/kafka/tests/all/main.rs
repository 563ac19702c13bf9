//! Tests of the Kafka clients against a real Apache Kafka broker
//! (`tests/kafka/broker.sh`). Without a broker they fail in CI and say
//! SKIPPED elsewhere.

// Helpers: the broker, unique topic names, reading a topic to its end.
mod util;
// Transactions on the shared broker: commit, abort, offsets in the
// transaction, a zombie producer fenced.
mod transactions;
// Consumer groups (classic and KIP-848) with offsets in the transaction.
mod groups;
// A broker of the test's own, restarted and killed mid-run.
mod restart;
