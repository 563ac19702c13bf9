#!/usr/bin/env bash
# Eddy on Kafka, in one command, on this machine:
#   ./examples/kafka/run.sh
# Starts a local Apache Kafka broker (tests/kafka/broker.sh: Kafka 4.4.0 from
# Maven Central, run with this machine's Java 17), creates two topics,
# produces the counter example's events, runs the counter from topic to topic
# with exactly-once on, and prints the output topic as a read_committed
# consumer sees it. `tests/kafka/broker.sh stop` stops the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
cargo build --quiet --release -p eddy-cli
eddy=target/release/eddy

bootstrap=$(tests/kafka/broker.sh start | tail -n 1)
export EDDY_KAFKA_BOOTSTRAP="$bootstrap"
run=$(date +%s)
payments="payments-$run"
totals="totals-$run"
$eddy kafka create-topic "$payments" --partitions 4
$eddy kafka create-topic "$totals" --partitions 4
$eddy kafka produce "$payments" --key customer < examples/counter/events.jsonl

state=$(mktemp -d)
$eddy run --operator counter=plugins/target/wasm32-wasip2/release/counter.wasm \
  --input "kafka://$bootstrap/$payments?group=demo-$run&until_end=true" \
  --output "kafka://$bootstrap/$totals" \
  --state "$state"

echo "--- $totals (read_committed):" >&2
$eddy kafka consume "$totals" --until-end
echo "--- dead letters:" >&2
cat "$state/dead-letter.jsonl" >&2
echo "(the broker keeps running at $bootstrap: tests/kafka/broker.sh stop)" >&2
