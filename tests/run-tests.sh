#!/usr/bin/env bash
# Runs the whole test suite from a fresh checkout:
#   ./tests/run-tests.sh [extra cargo test arguments]
# First installs what the tests need through the ordinary package managers:
# the Rust toolchain that rust-toolchain.toml pins, with the wasm32-wasip2
# target (rustup), clang with the WebAssembly target and a WASI libc for C
# operators and headless Chromium for the live page (Debian packages, needs
# root or sudo),
# componentize-py for Python operators (pip) and componentize-js for
# JavaScript operators (npm, pinned by plugins/js/package-lock.json); for
# Kafka, librdkafka's build headers, Java and Maven (Debian packages) and
# the broker's jars (Maven Central), then starts a Kafka broker on
# 127.0.0.1 for the run (tests/kafka/).
#
# Outside CI an install that fails is reported and the tests that need it
# say SKIPPED; with CI set, it fails the run. The local-user attack tests
# need root (they act as uid 65534 through setpriv).
set -euo pipefail
cd "$(dirname "$0")/.."

install_failed() {
  if [ -n "${CI:-}" ]; then
    echo "tests/run-tests.sh: could not install $1" >&2
    exit 1
  fi
  echo "tests/run-tests.sh: could not install $1; the tests that need it will say SKIPPED" >&2
}

# The toolchain that rust-toolchain.toml pins, with its target and
# components: rustup installs it on first use only where auto-install is on.
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
# C: clang with the WebAssembly target and a WASI libc (Debian packages).
if ! command -v clang >/dev/null || [ ! -f /usr/lib/wasm32-wasi/libc.a ]; then
  { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32; } ||
    install_failed "clang and wasi-libc (apt-get install clang lld wasi-libc libclang-rt-dev-wasm32)"
fi
# The live page's test: a real browser, headless Chromium (Debian package).
if ! command -v chromium >/dev/null; then
  { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } ||
    install_failed "chromium (apt-get install chromium)"
fi
# Python: componentize-py from PyPI.
command -v componentize-py >/dev/null ||
  python3 -m pip install --quiet componentize-py==0.25.1 ||
  install_failed "componentize-py (pip install componentize-py==0.25.1)"
# JavaScript: componentize-js from npm, pinned by plugins/js/package-lock.json.
(cd plugins/js && npm ci --no-audit --no-fund --silent) ||
  install_failed "componentize-js (cd plugins/js && npm ci)"

# Kafka: librdkafka's build headers, Java and Maven, the broker's jars.
tests/kafka/install-deps.sh ||
  install_failed "the Kafka build and broker dependencies (tests/kafka/install-deps.sh)"
# Kafka: a real broker for the Kafka tests (tests/kafka/broker.sh), stopped
# when this script exits; a broker already named by EDDY_KAFKA_BOOTSTRAP is
# used as it is.
if [ -z "${EDDY_KAFKA_BOOTSTRAP:-}" ]; then
  if EDDY_KAFKA_BOOTSTRAP="$(tests/kafka/broker.sh start)"; then
    export EDDY_KAFKA_BOOTSTRAP
    trap 'tests/kafka/broker.sh stop || true' EXIT
  else
    install_failed "a Kafka broker (tests/kafka/broker.sh start)"
  fi
fi

# Tests that cannot run their subject list themselves here (see
# tests/tests/all/util.rs, `skipped`); the summary at the end shows them.
skipped=target/tmp/eddy-skipped.txt
rm -f "$skipped"
status=0
cargo test --release --workspace "$@" || status=$?
if [ -s "$skipped" ]; then
  echo "--- $(sort -u "$skipped" | wc -l) test subject(s) skipped:" >&2
  sort -u "$skipped" >&2
else
  echo "--- no test skipped its subject" >&2
fi
exit "$status"
