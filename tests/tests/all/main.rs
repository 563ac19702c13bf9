//! End-to-end tests: real components, real redb, real files.

// Helpers: temp dirs, pipelines, reading state and output back.
mod util;

// The keyed counter against a reference computed here.
mod counter;
// Each example pipeline on its sample input against its expected output.
mod examples;
// Stopping and restarting resumes exactly where the last checkpoint was.
mod restart;
// Bad input lines are dead-lettered with their line numbers.
mod dead_letter;
// kill -9 at random moments, restart: exact state, outputs once.
mod crash;
// Operators that trap, loop, allocate without bound or break limits.
mod faults;
// Hot swap under a running stream: barrier, migration, rejects, rollback.
mod swap;
// The `eddy` binary: exit codes and the messages users see.
mod cli;
// Operators in Python, JavaScript and C against the Rust ones.
mod languages;
// Timers in the Python, JavaScript and C SDKs: the same package-delay
// output as Rust.
mod languages_time;
// The control socket: owner only, and hardened against abusive clients.
mod harden_control;
// The HTTP control plane: /metrics against the counts, /state/.. as of the
// last checkpoint, the TCP listener's token.
mod http;
// `eddy snapshot`: one checkpoint copied while the pipeline runs; a
// pipeline resumes from it.
mod snapshot;
// Inputs never destroyed, split or altered: same-file outputs, half-written
// lines, numeric keys, device and FIFO outputs, write errors, BOM, non-UTF-8.
mod harden_io;
// Planted compile cache entries, replaced kept components, FIFOs as components,
// damaged or foreign state files: refused with a clear error, never run.
mod harden_storage;
// A failed restart, limits on names, keys, emits and per-key state,
// deterministic randomness.
mod harden_sandbox;
// `handle-batch` results the host must refuse: replayed per event.
mod boundary;
// `eddy run`'s progress: plain lines, the bar on a terminal, --quiet.
mod progress;
// `eddy new`: each language's template builds and runs.
mod new;
// Event time: watermarks, timers in order, 1 vs 4 workers.
mod time;
// The watermark's idle timeout on a live input, with the test clock.
mod time_idle;
// Kafka in and out on the real broker: exactly once across restarts, kill -9
// and a crash between the two commits; bad records dead-lettered.
mod kafka;
// Many processes on one consumer group (Kafka group mode).
mod group;
// State time to live: expiry at the watermark, storage reclaimed.
mod ttl;
// Tumbling windows kept and fired by the host: known answers.
mod windows;
// Windows over a WebAssembly aggregate declared in the pipeline file: known
// answers, 1 vs 4 workers, each bad `window` setting's error.
mod windows_wasm;
// The window aggregate in the Python, JavaScript and C SDKs: the same
// pipeline file gives byte-identical outputs in all four languages.
mod windows_lang;
// Hot swap and rollback of a window aggregate: windows kept, refusals.
mod windows_swap;
// A state cache far smaller than the key set: exact counts, across kill -9
// and restart and across a hot swap that migrates evicted keys.
mod cache;
// A key's list grown to a million items under a small cache: read only by
// range, exact results and bounded memory, across kill -9 and restart.
mod big_state;
// Compaction of a running pipeline's state database at a quiet moment:
// the file shrinks after expired state, the state stays exact.
mod compact;
