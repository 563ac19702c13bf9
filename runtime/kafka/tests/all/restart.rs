//! A broker of the test's own, restarted and killed mid-run: committed
//! transactions survive both, a producer carries on after a restart, and
//! a transaction left open by a crashed producer is aborted when its
//! successor starts (issue 15's broker-restart and kill -9 tests build on
//! this).

use std::time::Instant;

use eddy_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use eddy_kafka::{admin, config};

use crate::util::{self, read_to_end, unique, user, values, TIMEOUT};

async fn send(producer: &FutureProducer, topic: &str, value: &str) {
    producer
        .send(FutureRecord::to(topic).key("k").payload(value), TIMEOUT)
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("producing {value}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_across_broker_restart_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let Some(broker) = util::own_broker(
        "kafka transactions_across_broker_restart_and_crash",
        dir.path(),
    ) else {
        return;
    };
    eprintln!("own broker up in {:?}", t0.elapsed());
    let bootstrap = broker.bootstrap().to_string();
    let topic = unique("restart");
    admin::create_topic(&bootstrap, &topic, 1, 1, TIMEOUT)
        .await
        .unwrap();
    let id = unique("txn");
    let producer = || -> FutureProducer {
        config::transactional_producer(&user(&bootstrap), &id)
            .unwrap()
            .create()
            .unwrap()
    };

    let first = producer();
    first.init_transactions(TIMEOUT).unwrap();
    first.begin_transaction().unwrap();
    send(&first, &topic, "a").await;
    first.commit_transaction(TIMEOUT).unwrap();

    // Controlled restart: the same producer goes on once the broker is
    // back.
    let t0 = Instant::now();
    broker.restart().expect("restart");
    eprintln!("broker restarted in {:?}", t0.elapsed());
    first.begin_transaction().unwrap();
    send(&first, &topic, "b").await;
    first
        .commit_transaction(TIMEOUT)
        .expect("commit after a broker restart");

    // The producer dies with a transaction open, then the broker crashes.
    first.begin_transaction().unwrap();
    send(&first, &topic, "c").await;
    drop(first);
    let t0 = Instant::now();
    broker.kill().expect("kill");
    broker.resume().expect("resume after kill");
    eprintln!("broker killed and resumed in {:?}", t0.elapsed());

    // Its successor (same transactional.id) aborts "c" and goes on.
    let successor = producer();
    successor
        .init_transactions(TIMEOUT)
        .expect("successor init_transactions after the crash");
    successor.begin_transaction().unwrap();
    send(&successor, &topic, "d").await;
    successor.commit_transaction(TIMEOUT).unwrap();

    let read = read_to_end(&bootstrap, &topic, 1, "read_committed");
    assert_eq!(
        values(&read),
        ["a", "b", "d"],
        "read_committed after restart and crash"
    );
    let all = read_to_end(&bootstrap, &topic, 1, "read_uncommitted");
    assert_eq!(
        values(&all),
        ["a", "b", "c", "d"],
        "the aborted record is in the log"
    );
}
