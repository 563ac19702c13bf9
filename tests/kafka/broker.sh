#!/usr/bin/env bash
# A real Apache Kafka broker for Eddy's Kafka tests: one KRaft node
# (broker + controller in one JVM) on 127.0.0.1, set up so that
# transactions work with one replica.
#
#   tests/kafka/broker.sh fetch              jars into the cache (Maven), nothing else
#   tests/kafka/broker.sh start   [--dir D] [--port P]
#                                            fresh data dir, format, start, wait
#   tests/kafka/broker.sh stop    [--dir D]  SIGTERM (controlled shutdown), then SIGKILL
#   tests/kafka/broker.sh kill    [--dir D]  SIGKILL at once (a broker crash)
#   tests/kafka/broker.sh restart [--dir D]  stop, then start on the same data and port
#   tests/kafka/broker.sh resume  [--dir D]  start on the same data and port (after kill/stop)
#   tests/kafka/broker.sh status  [--dir D]  exit 0 and print the address if it answers
#   tests/kafka/broker.sh env     [--dir D]  print `export EDDY_KAFKA_BOOTSTRAP=...`
#   tests/kafka/broker.sh clean   [--dir D]  stop, then remove D
#
# D, the broker's own folder (config, data, log, pid, address), defaults to
# $EDDY_KAFKA_DIR or <repo>/target/kafka; tests that restart or kill a
# broker start their own in a temporary D. `start` writes the bootstrap
# address (127.0.0.1:PORT) to D/bootstrap and prints it on stdout; the
# tests read $EDDY_KAFKA_BOOTSTRAP, else <repo>/target/kafka/bootstrap.
#
# Jars: org.apache.kafka:kafka_2.13 (tests/kafka/pom.xml) and its
# dependencies, copied by Maven from Maven Central into
# $EDDY_KAFKA_CACHE (default ~/.cache/eddy/kafka-<version>) once; later
# starts use the cache and no network. Needs Java 17 or later
# ($EDDY_KAFKA_JAVA, else $JAVA_HOME/bin/java, else java), Maven for the
# first fetch, python3 (free ports, cluster id) and flock.
#
# Waits are bounded: $EDDY_KAFKA_START_TIMEOUT (default 120 s) for the
# broker to answer, $EDDY_KAFKA_STOP_TIMEOUT (default 30 s) for a
# controlled shutdown. The heap is $EDDY_KAFKA_HEAP (default 512m).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${EDDY_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eddy/kafka-$kafka_version}"
dir="${EDDY_KAFKA_DIR:-$repo/target/kafka}"
port=""
start_timeout="${EDDY_KAFKA_START_TIMEOUT:-120}"
stop_timeout="${EDDY_KAFKA_STOP_TIMEOUT:-30}"
heap="${EDDY_KAFKA_HEAP:-512m}"

say() { echo "broker.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --port) port="$2"; shift 2 ;;
    --port=*) port="${1#--port=}"; shift ;;
    *) usage ;;
  esac
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

java_bin() {
  if [ -n "${EDDY_KAFKA_JAVA:-}" ]; then
    echo "$EDDY_KAFKA_JAVA"
  elif [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME/bin/java"
  else
    command -v java || die "no java found: Kafka $kafka_version needs Java 17 or later (set EDDY_KAFKA_JAVA)"
  fi
}

check_java() {
  local java major
  java="$(java_bin)"
  [ -x "$java" ] || die "$java is not an executable Java: Kafka $kafka_version needs Java 17 or later (set EDDY_KAFKA_JAVA)"
  major="$("$java" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
  [ -n "$major" ] && [ "$major" -ge 17 ] ||
    die "$java is Java ${major:-?}: Kafka $kafka_version's broker needs Java 17 or later (set EDDY_KAFKA_JAVA)"
}

# The jars, from the cache; fetched through Maven when the cache lacks them
# or was filled for another pom.xml.
fetch() {
  local stamp want tmp t0
  stamp="$cache/lib/.complete"
  want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed once to fetch the Kafka jars into $cache"
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/lib.tmp.XXXXXX")"
  say "fetching Kafka $kafka_version jars with Maven into $cache/lib"
  t0=$SECONDS
  if ! mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$cache/mvn.log" 2>&1; then
    tail -n 30 "$cache/mvn.log" >&2
    rm -rf "$tmp"
    die "Maven could not fetch the Kafka jars (log: $cache/mvn.log)"
  fi
  rm -rf "$cache/lib"
  mv "$tmp" "$cache/lib"
  echo "$want" >"$stamp"
  say "fetched $(ls "$cache/lib" | grep -c '\.jar$') jars in $((SECONDS - t0)) s"
}

pid_of() {
  local pid
  [ -f "$dir/broker.pid" ] || return 1
  pid="$(cat "$dir/broker.pid")"
  # The pid is ours only while it is a JVM running this folder's config.
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/server.properties" || return 1
  echo "$pid"
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
  local broker_port="$1" controller_port="$2"
  cat >"$dir/server.properties" <<EOF
# Written by tests/kafka/broker.sh: a single KRaft node for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$broker_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$broker_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# One replica everywhere, so that the internal topics (consumer offsets,
# transaction state, share groups) can be created and transactions commit.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create their topics: a missing topic stays an error.
auto.create.topics.enable=false
num.partitions=1
# A consumer group's first rebalance without the 3 s wait.
group.initial.rebalance.delay.ms=0
# After a kill -9, the broker's old registration must expire before it can
# register again: 6 s instead of 9 (heartbeats every second, not 2).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
# A transaction left open by a killed process is aborted within a second
# of its timeout (default: a scan every 10 s), so group tests see its
# partitions' last stable offset move on soon.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
EOF
  echo "$broker_port" >"$dir/port"
}

# Starts the JVM on the config and data in $dir and waits until it answers.
launch() {
  local java pid broker_port t0
  java="$(java_bin)"
  broker_port="$(cat "$dir/port")"
  if answers "$broker_port"; then
    die "127.0.0.1:$broker_port is already taken by another process"
  fi
  t0=$SECONDS
  : >"$dir/broker.log"
  setsid "$java" "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.properties" \
    -cp "$cache/lib/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/broker.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$dir/broker.pid"
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$dir/broker.log" >&2
      die "the broker exited while starting (log: $dir/broker.log)"
    fi
    if grep -q 'Kafka Server started' "$dir/broker.log" && answers "$broker_port"; then
      break
    fi
    if [ $((SECONDS - t0)) -ge "$start_timeout" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      tail -n 40 "$dir/broker.log" >&2
      die "the broker did not answer on 127.0.0.1:$broker_port within $start_timeout s (log: $dir/broker.log)"
    fi
    sleep 0.2
  done
  echo "127.0.0.1:$broker_port" >"$dir/bootstrap"
  say "Kafka $kafka_version up on 127.0.0.1:$broker_port in $((SECONDS - t0)) s (pid $pid, folder $dir)"
  echo "127.0.0.1:$broker_port"
}

start() {
  local pid java cluster_id controller_port t0
  if pid="$(pid_of)"; then
    say "already running (pid $pid)"
    cat "$dir/bootstrap"
    return 0
  fi
  check_java
  fetch
  java="$(java_bin)"
  t0=$SECONDS
  [ -n "$port" ] || port="$(free_port)"
  controller_port="$(free_port)"
  while [ "$controller_port" = "$port" ]; do controller_port="$(free_port)"; done
  rm -rf "$dir/data" "$dir/bootstrap"
  write_config "$port" "$controller_port"
  # Never starting with "-" (one id in 64 would): the format command
  # would read it as an option (Kafka's own ids avoid it the same way).
  cluster_id="$(python3 -c 'import base64, uuid
while True:
    i = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not i.startswith("-"):
        break
print(i)')"
  if ! "$java" -Dlog4j2.configurationFile="$here/log4j2.properties" -cp "$cache/lib/*" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
    >"$dir/format.log" 2>&1; then
    cat "$dir/format.log" >&2
    die "formatting $dir/data failed"
  fi
  say "formatted $dir/data in $((SECONDS - t0)) s"
  launch
}

# Starts again on the data and port it had (after stop or kill).
resume() {
  local pid
  if pid="$(pid_of)"; then
    say "already running (pid $pid)"
    cat "$dir/bootstrap"
    return 0
  fi
  [ -f "$dir/server.properties" ] && [ -d "$dir/data" ] ||
    die "nothing to resume in $dir: use start"
  check_java
  fetch
  launch
}

stop() {
  local pid signal="${1:-TERM}" t0
  if ! pid="$(pid_of)"; then
    rm -f "$dir/broker.pid"
    say "not running ($dir)"
    return 0
  fi
  t0=$SECONDS
  kill -"$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "$stop_timeout" ]; then
      say "no controlled shutdown within $stop_timeout s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$dir/broker.pid"
  say "stopped (SIG$signal, $((SECONDS - t0)) s)"
}

status() {
  local pid broker_port
  if pid="$(pid_of)" && broker_port="$(cat "$dir/port")" && answers "$broker_port"; then
    echo "127.0.0.1:$broker_port"
    say "running (pid $pid, folder $dir)"
    return 0
  fi
  say "not running ($dir)"
  return 1
}

# One command at a time on a folder: two test binaries may both ask for the
# shared broker.
exec 9>"$dir/.lock"
case "$cmd" in
  fetch) check_java; fetch ;;
  start) flock 9; start ;;
  resume) flock 9; resume ;;
  stop) flock 9; stop TERM ;;
  kill) flock 9; stop KILL ;;
  restart) flock 9; stop TERM; resume ;;
  status) status ;;
  env)
    status >/dev/null 2>&1 || die "not running ($dir)"
    echo "export EDDY_KAFKA_BOOTSTRAP=$(cat "$dir/bootstrap")"
    ;;
  clean)
    flock 9
    stop TERM
    rm -rf "$dir"
    ;;
  *) usage ;;
esac
