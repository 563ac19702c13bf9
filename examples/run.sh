#!/usr/bin/env bash
# Runs one example pipeline from a fresh checkout:
#   ./examples/run.sh [counter|fraud|sessions|recommend|tracking|trading|forecast]   (default: counter)
# Builds the example operators (WebAssembly components) and eddy first.
set -euo pipefail
cd "$(dirname "$0")/.."
example="${1:-counter}"
if [ ! -f "examples/$example/pipeline.toml" ]; then
  echo "no example named '$example'; try one of: $(ls examples | grep -v '\.sh$' | tr '\n' ' ')" >&2
  exit 2
fi
# The toolchain that rust-toolchain.toml pins, with its target and
# components: rustup installs it on first use only where auto-install is on.
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
# The whole workspace, not just eddy-cli: the test command then reuses
# this build of wasmtime instead of compiling it a second time (the
# workspace's features differ from those of eddy-cli alone).
cargo build --quiet --release --workspace
# Each demo run starts from empty state; run target/release/eddy yourself to
# see a second run resume where the first stopped.
rm -rf "examples/$example/eddy-data" "examples/$example/dead-letter.jsonl"
target/release/eddy run "examples/$example/pipeline.toml"
if [ -s "examples/$example/dead-letter.jsonl" ]; then
  echo "--- dead letters (examples/$example/dead-letter.jsonl):" >&2
  cat "examples/$example/dead-letter.jsonl" >&2
fi
