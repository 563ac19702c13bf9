//! The [`Status`] answer: versions from the swap controller, counters and
//! positions from the workers.

use std::sync::atomic::Ordering;

use super::protocol::{OperatorStatus, Status, WorkerStatus};
use crate::stats::OpStats;
use crate::swap::Controller;

/// The pipeline as `eddy status` shows it.
pub(super) fn status(controller: &Controller) -> Status {
    let live = controller.live();
    let workers: Vec<_> = (0..live.workers.len())
        .map(|id| live.worker(id).clone())
        .collect();
    let versions = controller.versions().clone();
    let operators = controller
        .operator_names()
        .zip(versions)
        .enumerate()
        .map(|(i, (name, v))| {
            let per: Vec<OpStats> = workers
                .iter()
                .map(|w| w.ops.get(i).copied().unwrap_or_default())
                .collect();
            OperatorStatus {
                name: name.to_string(),
                version: v.current().clone(),
                handled: per.iter().map(|s| s.handled).sum(),
                failed: per.iter().map(|s| s.failed).sum(),
                emitted: per.iter().map(|s| s.emitted).sum(),
                versions: v.all,
                workers: per,
            }
        })
        .collect();
    Status {
        pid: std::process::id(),
        state_dir: controller.state_dir().display().to_string(),
        input: controller.input().to_string(),
        lines_read: live.lines_read.load(Ordering::Relaxed),
        watermark: Some(live.watermark.load(Ordering::Relaxed)).filter(|&w| w != i64::MIN),
        kafka: live.kafka().clone(),
        state_bytes: controller.store().size_bytes(),
        compactions: live.compactions.status(),
        operators,
        workers: workers
            .into_iter()
            .enumerate()
            .map(|(id, w)| WorkerStatus {
                id,
                line: w.line,
                pauses: w.pauses,
            })
            .collect(),
    }
}
