//! The clock the pipeline reads for what depends on time passing rather
//! than on the input: the watermark's idle timeout
//! ([`crate::WatermarkSpec::idle_timeout_ms`]).
//!
//! Tests drive it: with [`TEST_CLOCK_ENV`] naming a file, the clock reads
//! the number of milliseconds written there (a test moves time on by
//! writing a larger number), so no test waits for real time to pass.

use std::path::PathBuf;
use std::time::Instant;

/// For tests only: `EDDY_TEST_CLOCK=FILE` makes the clock read the
/// milliseconds written in `FILE` (an unreadable or malformed file keeps
/// the last value read, 0 at first).
pub const TEST_CLOCK_ENV: &str = "EDDY_TEST_CLOCK";

/// Milliseconds on a monotonic scale: since the clock was made, or as the
/// test clock's file says.
#[derive(Debug)]
pub enum Clock {
    /// The machine's monotonic clock.
    System(Instant),
    /// The test clock: the file, and the last value read from it.
    File(PathBuf, u64),
}

impl Clock {
    /// The test clock when [`TEST_CLOCK_ENV`] is set, the machine's
    /// otherwise.
    pub fn from_env() -> Clock {
        match std::env::var_os(TEST_CLOCK_ENV) {
            Some(path) if !path.is_empty() => {
                let mut c = Clock::File(PathBuf::from(path), 0);
                c.now_ms();
                c
            }
            _ => Clock::System(Instant::now()),
        }
    }

    /// The time now, in milliseconds; never less than before.
    pub fn now_ms(&mut self) -> u64 {
        match self {
            Clock::System(start) => start.elapsed().as_millis().min(u64::MAX as u128) as u64,
            Clock::File(path, last) => {
                if let Some(ms) = std::fs::read_to_string(&*path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                {
                    *last = (*last).max(ms);
                }
                *last
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_clock_reads_its_file_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        let mut c = Clock::File(path.clone(), 0);
        assert_eq!(c.now_ms(), 0, "no file yet");
        std::fs::write(&path, "1500\n").unwrap();
        assert_eq!(c.now_ms(), 1500);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(c.now_ms(), 1500, "kept");
        std::fs::write(&path, "900").unwrap();
        assert_eq!(c.now_ms(), 1500, "never back");
        std::fs::write(&path, "2000").unwrap();
        assert_eq!(c.now_ms(), 2000);
        let mut s = Clock::System(Instant::now());
        let a = s.now_ms();
        assert!(s.now_ms() >= a);
    }
}
