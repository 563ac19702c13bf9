//! The workers on their own: a swap carried in a batch splits its events
//! exactly where it falls, the state carries over, the retired instance is
//! dropped off the worker's thread, and the pause leaves out the time the
//! worker had no event to handle but counts a slow first run of the new
//! version.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

use super::{Batch, Msg, Workers};
use crate::config::Limits;
use crate::operator::{EventRef, HandleError, Loaded, OpCtx, Operator, OperatorKind};
use crate::sink::SinkMsg;
use crate::state::Store;
use crate::stats::Live;

/// Which version was dropped on which thread.
type Drops = Arc<Mutex<Vec<(u32, String)>>>;

/// A per-key counter that tags its outputs with its version, and records
/// which thread dropped it.
struct Tagged {
    ctx: OpCtx,
    version: u32,
    dropped_on: Drops,
    /// Its first event takes that long more (a cold first call).
    slow_first: Option<Duration>,
}

impl Operator for Tagged {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.ctx
    }

    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError> {
        if let Some(d) = self.slow_first.take() {
            std::thread::sleep(d);
        }
        let fail = |e: &dyn std::fmt::Display| HandleError::Failed(e.to_string());
        let n = match self.ctx.get("n").map_err(|e| fail(&e))? {
            Some(b) => serde_json::from_slice::<u64>(b).map_err(|e| fail(&e))?,
            None => 0,
        } + 1;
        self.ctx
            .set("n", n.to_string().as_bytes())
            .map_err(|e| fail(&e))?;
        let out = serde_json::json!({ "n": n, "version": self.version });
        self.ctx
            .emit(event.key, out.to_string().as_bytes())
            .map_err(|e| fail(&e))
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        self.dropped_on.lock().unwrap().push((self.version, thread));
    }
}

/// One worker running `Tagged` version 1, its sink's receiver, and where
/// instances report their drop.
struct One {
    workers: Workers,
    sink: Receiver<SinkMsg>,
    live: Arc<Live>,
    dropped_on: Drops,
    _dir: tempfile::TempDir,
}

impl One {
    fn start() -> One {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let dropped_on = Arc::new(Mutex::new(Vec::new()));
        let d = dropped_on.clone();
        let op = Loaded {
            name: "tagged".into(),
            kind: OperatorKind::Native(Arc::new(move |ctx| {
                Box::new(Tagged {
                    ctx,
                    version: 1,
                    dropped_on: d.clone(),
                    slow_first: None,
                }) as Box<dyn Operator>
            })),
            config: "{}".into(),
            limits: Limits::default(),
            generation: 0,
            history: Arc::default(),
            ttl: Vec::new(),
        };
        let (tx, sink) = unbounded();
        let live = Arc::new(Live::new(1, 1));
        let workers = Workers::start(1, &[op], &store, &tx, &live, &Default::default(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        One {
            workers,
            sink,
            live,
            dropped_on,
            _dir: dir,
        }
    }

    /// Version `version`'s instance.
    fn version(&self, version: u32, slow_first: Option<Duration>) -> Box<dyn Operator> {
        Box::new(Tagged {
            ctx: OpCtx::new("tagged".into(), None, Limits::default()),
            version,
            dropped_on: self.dropped_on.clone(),
            slow_first,
        })
    }

    /// Version 2's instance.
    fn v2(&self) -> Box<dyn Operator> {
        self.version(2, None)
    }

    /// Sends `batch` and waits until it is handled.
    fn handle(&self, batch: Batch) {
        self.workers.inflight.add();
        self.workers.send(0, Msg::batch(batch)).unwrap();
        self.workers.inflight.wait_until(|n| n == 0).unwrap();
    }

    /// Stops the worker: its outputs as (key, count, version), in order.
    fn stop(mut self) -> (Vec<(String, u64, u64)>, Drops) {
        for r in self.workers.stop().into_iter().flatten() {
            r.unwrap().unwrap();
        }
        let mut out = Vec::new();
        for msg in self.sink.try_iter() {
            if let SinkMsg::Out(bytes) = msg {
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                    out.push((
                        v["key"].as_str().unwrap().to_string(),
                        v["value"]["n"].as_u64().unwrap(),
                        v["value"]["version"].as_u64().unwrap(),
                    ));
                }
            }
        }
        (out, self.dropped_on)
    }
}

fn events(batch: &mut Batch, keys: &[&str], first_line: u64) {
    for (i, k) in keys.iter().enumerate() {
        batch.push(0, k, b"{}", None, first_line + i as u64);
    }
}

#[test]
fn a_swap_in_a_batch_splits_its_events_where_it_falls_and_keeps_the_state() {
    let one = One::start();
    let mut batch = Batch::default();
    events(&mut batch, &["a", "b", "a"], 1);
    batch.switch_here(0, one.v2(), 1);
    events(&mut batch, &["b", "a", "b"], 4);
    one.handle(batch);
    let pauses = one.live.worker(0).pauses.clone();
    let (out, dropped_on) = one.stop();
    let out: Vec<(&str, u64, u64)> = out.iter().map(|(k, n, v)| (&**k, *n, *v)).collect();
    assert_eq!(
        out,
        [
            ("a", 1, 1),
            ("b", 1, 1),
            ("a", 2, 1),
            ("b", 2, 2),
            ("a", 3, 2),
            ("b", 3, 2),
        ],
        "events before the switch to version 1, after it to version 2, each once, counts carried over"
    );
    // The retired instance was dropped by the reaper, not the worker.
    let mut dropped = dropped_on.lock().unwrap().clone();
    dropped.sort();
    assert_eq!(
        dropped,
        [
            (1, "eddy-reaper".to_string()),
            (2, "eddy-worker-0".to_string())
        ]
    );
    // Both versions' events were in hand: no time without an event.
    assert_eq!(pauses.len(), 1);
    assert_eq!((pauses[0].stage, pauses[0].generation), (0, 1));
    assert_eq!(pauses[0].idle_us, 0.0);
    assert!(pauses[0].before_switch_us <= pauses[0].pause_us);
}

#[test]
fn a_swap_before_any_event_of_its_batch_and_a_batch_with_no_event() {
    let one = One::start();
    let mut batch = Batch::default();
    events(&mut batch, &["a"], 1);
    one.handle(batch);
    // A swap alone (the coordinator flushes it so at a checkpoint), then
    // events, then another swap at the start of a batch.
    let mut alone = Batch::default();
    alone.switch_here(0, one.v2(), 1);
    assert!(alone.is_empty() && alone.carries_cut());
    one.handle(alone);
    let mut batch = Batch::default();
    events(&mut batch, &["a", "b"], 2);
    one.handle(batch);
    let back = one.version(3, None);
    let mut batch = Batch::default();
    batch.switch_here(0, back, 2);
    events(&mut batch, &["b", "a"], 4);
    one.handle(batch);
    let pauses = one.live.worker(0).pauses.clone();
    let (out, dropped_on) = one.stop();
    let out: Vec<(&str, u64, u64)> = out.iter().map(|(k, n, v)| (&**k, *n, *v)).collect();
    assert_eq!(
        out,
        [
            ("a", 1, 1),
            ("a", 2, 2),
            ("b", 1, 2),
            ("b", 2, 3),
            ("a", 3, 3)
        ]
    );
    let generations: Vec<u32> = pauses.iter().map(|p| p.generation).collect();
    assert_eq!(generations, [1, 2]);
    let mut dropped = dropped_on.lock().unwrap().clone();
    dropped.sort();
    // Versions 1 and 2 retired to the reaper; version 3 dropped with its
    // worker.
    assert_eq!(
        dropped,
        [
            (1, "eddy-reaper".to_string()),
            (2, "eddy-reaper".to_string()),
            (3, "eddy-worker-0".to_string())
        ]
    );
}

#[test]
fn the_pause_leaves_out_the_time_the_worker_had_no_event() {
    let one = One::start();
    let mut batch = Batch::default();
    events(&mut batch, &["a", "b"], 1);
    one.handle(batch);
    // The stream is quiet for a while, then the swap comes with the next
    // events.
    let quiet = Duration::from_millis(300);
    std::thread::sleep(quiet);
    let mut batch = Batch::default();
    batch.switch_here(0, one.v2(), 1);
    events(&mut batch, &["a", "b"], 3);
    one.handle(batch);
    let pauses = one.live.worker(0).pauses.clone();
    one.stop();
    assert_eq!(pauses.len(), 1);
    let p = pauses[0];
    // The worker had nothing to handle for the quiet time: not a pause,
    // but part of the gap between the versions' events.
    assert!(p.idle_us >= quiet.as_secs_f64() * 1e6, "{p:?}");
    assert!(p.pause_us < quiet.as_secs_f64() * 1e6, "{p:?}");
}

#[test]
fn a_slow_first_run_of_the_new_version_is_counted_apart_from_the_switch() {
    let one = One::start();
    let mut batch = Batch::default();
    events(&mut batch, &["a", "b"], 1);
    let cold = Duration::from_millis(200);
    batch.switch_here(0, one.version(2, Some(cold)), 1);
    events(&mut batch, &["a", "b"], 3);
    one.handle(batch);
    // Until the new version's second run, its usual pace is unknown.
    assert_eq!(one.live.worker(0).pauses[0].first_run_extra_us, 0.0);
    let mut batch = Batch::default();
    events(&mut batch, &["a", "b", "c", "d"], 5);
    one.handle(batch);
    let p = one.live.worker(0).pauses[0];
    one.stop();
    let cold_us = cold.as_secs_f64() * 1e6;
    assert!(p.first_run_extra_us >= cold_us * 0.9, "{p:?}");
    assert!(p.pause_us < cold_us, "{p:?}");
}
