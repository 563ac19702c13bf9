//! `eddy run`'s progress: a bar on a terminal (position in the input,
//! events/s, ETA), a plain line every so often otherwise (a log file, a
//! pipe, CI), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use eddy_runtime::{Progress, Running};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is redrawn and the pipeline looked at.
const TICK: Duration = Duration::from_millis(50);

/// The window the rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A progress bar on the terminal (stderr).
    Bar,
    /// One plain line on stderr every this often.
    Lines(Duration),
    /// Nothing.
    Off,
}

impl Mode {
    /// A bar when stderr is a terminal, plain lines every `every`
    /// otherwise; nothing when `quiet`.
    pub fn choose(quiet: bool, every: Duration) -> Mode {
        match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Mode::Off,
            (false, true) => Mode::Bar,
            (false, false) => Mode::Lines(every),
        }
    }
}

/// Shows `running`'s progress until it stops (its input ends, or it is
/// asked to stop). The caller then waits for its summary.
pub fn show(running: &Running, mode: Mode) {
    let mut rate = Rate::new(running.progress());
    match mode {
        Mode::Off => {
            while !running.progress().finished {
                std::thread::sleep(TICK);
            }
        }
        Mode::Bar => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let mut sized = false;
            loop {
                let p = running.progress();
                let r = rate.update(&p);
                if p.finished {
                    break;
                }
                if let Some(size) = p.size {
                    if !sized {
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
                            )
                            .expect("a valid template")
                            .progress_chars("=> "),
                        );
                        sized = true;
                    }
                    bar.set_length(size.max(p.offset));
                    bar.set_position(p.offset);
                } else if !sized {
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                            .expect("a valid template"),
                    );
                }
                bar.set_message(format!("line {}, {:.0} events/s", p.lines, r.lines));
                bar.tick();
                std::thread::sleep(TICK);
            }
            bar.finish_and_clear();
        }
        Mode::Lines(every) => {
            let mut next = Instant::now() + every;
            loop {
                let p = running.progress();
                let r = rate.update(&p);
                if p.finished {
                    break;
                }
                if Instant::now() >= next {
                    eprintln!("{}", line(&p, &r));
                    next = Instant::now() + every;
                }
                std::thread::sleep(TICK.min(every));
            }
        }
    }
}

/// The plain progress line.
pub fn line(p: &Progress, r: &Rates) -> String {
    let mut s = format!("eddy: progress: line {}, {:.0} events/s", p.lines, r.lines);
    if let Some(size) = p.size.filter(|&s| s > 0) {
        let done = p.offset.min(size);
        s += &format!(
            ", {:.1}% of {} bytes",
            done as f64 * 100.0 / size as f64,
            size
        );
        if r.bytes > 0.0 && done < size {
            let eta = (size - done) as f64 / r.bytes;
            s += &match eta < 10.0 {
                true => format!(", ETA {eta:.1}s"),
                false => format!(", ETA {eta:.0}s"),
            };
        }
    }
    s
}

/// Lines and bytes per second over about the last [`RATE_WINDOW`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Input lines per second.
    pub lines: f64,
    /// Input bytes per second.
    pub bytes: f64,
}

/// Measures [`Rates`] from successive [`Progress`] samples.
struct Rate {
    /// The sample the rate is measured from: (elapsed, lines, offset).
    from: (Duration, u64, u64),
    last: Rates,
}

impl Rate {
    fn new(p: Progress) -> Rate {
        Rate {
            from: (p.elapsed, p.lines, p.offset),
            last: Rates::default(),
        }
    }

    fn update(&mut self, p: &Progress) -> Rates {
        let dt = p.elapsed.saturating_sub(self.from.0);
        // The first estimate comes after a fraction of the window.
        let first = self.last.lines == 0.0 && dt >= RATE_WINDOW / 4;
        if dt >= RATE_WINDOW || first {
            let secs = dt.as_secs_f64();
            self.last = Rates {
                lines: p.lines.saturating_sub(self.from.1) as f64 / secs,
                bytes: p.offset.saturating_sub(self.from.2) as f64 / secs,
            };
            if dt >= RATE_WINDOW {
                self.from = (p.elapsed, p.lines, p.offset);
            }
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(lines: u64, offset: u64, size: Option<u64>, ms: u64) -> Progress {
        Progress {
            lines,
            offset,
            lines_this_run: lines,
            bytes_this_run: offset,
            size,
            elapsed: Duration::from_millis(ms),
            finished: false,
        }
    }

    #[test]
    fn the_rate_is_measured_over_a_window() {
        let mut r = Rate::new(progress(0, 0, None, 0));
        assert_eq!(r.update(&progress(10, 100, None, 100)).lines, 0.0);
        // A first estimate after a quarter of the window...
        let x = r.update(&progress(500, 5_000, None, 500));
        assert_eq!((x.lines, x.bytes), (1_000.0, 10_000.0));
        // ...then one per window.
        assert_eq!(r.update(&progress(900, 9_000, None, 900)).lines, 1_000.0);
        let x = r.update(&progress(3_000, 40_000, None, 1_500));
        assert_eq!((x.lines, x.bytes), (2_000.0, 80_000.0 / 3.0));
        // Within the next window the last rate stands.
        assert_eq!(
            r.update(&progress(9_000, 41_000, None, 2_000)).lines,
            2_000.0
        );
    }

    #[test]
    fn the_line_gives_position_share_and_eta() {
        let r = Rates {
            lines: 1_000.0,
            bytes: 20_000.0,
        };
        assert_eq!(
            line(&progress(2_000, 40_000, Some(100_000), 2_000), &r),
            "eddy: progress: line 2000, 1000 events/s, 40.0% of 100000 bytes, ETA 3.0s"
        );
        assert_eq!(
            line(
                &progress(2_000, 40_000, Some(10_000_000), 2_000),
                &Rates {
                    lines: 1_000.0,
                    bytes: 1_000.0
                }
            ),
            "eddy: progress: line 2000, 1000 events/s, 0.4% of 10000000 bytes, ETA 9960s"
        );
        assert_eq!(
            line(&progress(2_000, 40_000, None, 2_000), &r),
            "eddy: progress: line 2000, 1000 events/s"
        );
        // All read (a file that stopped growing): no ETA.
        assert_eq!(
            line(&progress(5_000, 100_000, Some(100_000), 9_000), &r),
            "eddy: progress: line 5000, 1000 events/s, 100.0% of 100000 bytes"
        );
    }
}
