//! `eddy run --watch`: an operator is swapped when its component file
//! changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Asker, Controller};

impl Controller {
    /// Watches each operator's component file (`eddy run --watch`) and
    /// swaps to it when it changes, until the pipeline stops. Each file is
    /// polled every `every`; a change is acted on once the file has stayed
    /// the same for one more poll (a build may still be writing it).
    pub fn watch(
        self: &Arc<Self>,
        paths: Vec<(String, PathBuf)>,
        every: Duration,
    ) -> Option<std::thread::JoinHandle<()>> {
        let files = paths
            .into_iter()
            .map(|(op, path)| {
                let seen = fingerprint(&path);
                (op, path, seen, seen)
            })
            .collect::<Vec<_>>();
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("eddy-watch".into())
            .spawn(move || {
                let mut files = files;
                let step = Duration::from_millis(25).min(every);
                let mut waited = Duration::ZERO;
                while !this.stopped.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    for (op, path, acted, last) in &mut files {
                        let now = fingerprint(path);
                        let stable = now == *last;
                        *last = now;
                        if !stable || now == *acted || now.is_none() {
                            continue;
                        }
                        *acted = now;
                        match this.swap(op, path, &Asker::patient(WATCH_WAIT)) {
                            Ok(r) => eprintln!(
                                "eddy: watch: `{op}` now runs {} from {} (was {}), from line {}",
                                r.to.hash,
                                path.display(),
                                r.from.hash,
                                r.barrier_line + 1
                            ),
                            Err(e) => eprintln!("eddy: watch: {e}"),
                        }
                    }
                }
            });
        match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("cannot start the --watch thread: {e}");
                None
            }
        }
    }
}

/// How long a `--watch` swap may wait for another swap to finish.
const WATCH_WAIT: Duration = Duration::from_secs(600);

/// What identifies a version of a file cheaply: length and modification
/// time; `None` when it cannot be read.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}
