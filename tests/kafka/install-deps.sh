#!/usr/bin/env bash
# Installs, where missing, what the Kafka parts of Eddy need to build and
# test, then fetches the test broker's jars into their cache:
# - librdkafka, which rdkafka-sys builds from its bundled source with its
#   configure script: a C compiler, make, pkg-config, and the headers of
#   OpenSSL (TLS, SASL SCRAM) and zlib (Debian: gcc make pkg-config
#   libssl-dev zlib1g-dev);
# - the test broker (tests/kafka/broker.sh): Java 17 or later, Maven for
#   the first fetch of its jars, python3 (Debian: openjdk-17-jre-headless
#   maven python3).
# apt-get needs root or sudo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
command -v java >/dev/null || [ -x "${JAVA_HOME:-/nonexistent}/bin/java" ] || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "tests/kafka/install-deps.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
"$here/broker.sh" fetch
