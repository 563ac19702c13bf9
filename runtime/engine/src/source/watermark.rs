//! [`WatermarkGen`]: the watermark of the input, from the event times
//! read, and which events are late against it ([`Verdict`]).

use crate::config::{LatePolicy, WatermarkSpec};

/// What becomes of an event read at some time, against the watermark when
/// it is read (see [`WatermarkGen::judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not late (or no time): handled as usual.
    OnTime,
    /// Late, `late = "dead-letter"`: dead-lettered with this reason.
    DeadLetter(String),
    /// Late, `late = "drop"`: not handled, counted.
    Drop,
    /// Late, `late = "deliver"`: handled, flagged late.
    Deliver,
}

/// Follows the event times of the input and says when its watermark
/// advances: the largest time read so far minus `max_out_of_order`,
/// rounded down to a multiple of `step`. It depends on the input alone
/// (never on a clock, nor on how many workers there are).
#[derive(Debug, Clone)]
pub struct WatermarkGen {
    spec: WatermarkSpec,
    /// The watermark last announced (`i64::MIN`: none yet).
    current: i64,
    /// The largest event time read (`i64::MIN`: none yet; after a resume,
    /// the least it can have been).
    max_seen: i64,
}

impl WatermarkGen {
    /// A generator before any event.
    pub fn new(spec: WatermarkSpec) -> WatermarkGen {
        WatermarkGen {
            spec,
            current: i64::MIN,
            max_seen: i64::MIN,
        }
    }

    /// A generator resuming at watermark `w` (from a checkpoint).
    pub fn resume(spec: WatermarkSpec, w: i64) -> WatermarkGen {
        let bound = i64::try_from(spec.max_out_of_order).unwrap_or(i64::MAX);
        WatermarkGen {
            spec,
            current: w,
            max_seen: w.saturating_add(bound),
        }
    }

    /// The watermark announced last (`i64::MIN` before the first).
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Takes note of an event at time `t`: the new watermark when it
    /// advances. Saturates: times near `i64::MIN` give no watermark below
    /// it, and only the end of the input ([`WatermarkGen::end`]) reaches
    /// `i64::MAX`.
    pub fn observe(&mut self, t: i64) -> Option<i64> {
        self.max_seen = self.max_seen.max(t);
        let bound = i64::try_from(self.spec.max_out_of_order).unwrap_or(i64::MAX);
        let step = i64::try_from(self.spec.step).unwrap_or(i64::MAX).max(1);
        let raw = t.saturating_sub(bound);
        // Rounded down to a multiple of `step` (toward minus infinity);
        // one below `i64::MAX` at most.
        let w = raw
            .checked_sub(raw.rem_euclid(step))
            .unwrap_or(i64::MIN)
            .min(i64::MAX - 1);
        (w > self.current).then(|| {
            self.current = w;
            w
        })
    }

    /// The input has been idle for `idle_ms` milliseconds of the clock
    /// (see [`WatermarkSpec::idle_timeout_ms`]): the new watermark when
    /// that advances it, as if event time had gone on with the clock since
    /// the last event: the largest time read, plus `idle_ms`, minus
    /// `max_out_of_order`, rounded down to a multiple of `step`. Nothing
    /// before the first event, nor after the end of the input.
    pub fn idle(&mut self, idle_ms: u64) -> Option<i64> {
        if self.max_seen == i64::MIN || self.current == i64::MAX {
            return None;
        }
        let t = self
            .max_seen
            .saturating_add(i64::try_from(idle_ms).unwrap_or(i64::MAX));
        let max_seen = self.max_seen;
        let w = self.observe(t);
        // The times read are what they were.
        self.max_seen = max_seen;
        w
    }

    /// Whether an event at time `t`, read now (before it moves the
    /// watermark), is late, and what then becomes of it: late is a time
    /// below the watermark minus `allowed_lateness`. An event without a
    /// time, or read before the first watermark, is never late. Decided
    /// where the input is read, so it depends on the input alone, never on
    /// the number of workers.
    pub fn judge(&self, t: Option<i64>) -> Verdict {
        let Some(t) = t else {
            return Verdict::OnTime;
        };
        let limit = i128::from(self.current) - i128::from(self.spec.allowed_lateness);
        if self.current == i64::MIN || i128::from(t) >= limit {
            return Verdict::OnTime;
        }
        match self.spec.late {
            LatePolicy::Drop => Verdict::Drop,
            LatePolicy::Deliver => Verdict::Deliver,
            LatePolicy::DeadLetter => Verdict::DeadLetter(format!(
                "late event: time {t} is below the watermark {}{} minus allowed_lateness {}",
                self.current,
                if self.current == i64::MAX {
                    " (the input had ended)"
                } else {
                    ""
                },
                self.spec.allowed_lateness
            )),
        }
    }

    /// The input has ended: the watermark goes to `i64::MAX`. Again at
    /// each end (an input that grew after its end is read to its new end):
    /// what was set since fires then. Every event read after an end is
    /// late ([`WatermarkGen::judge`]).
    pub fn end(&mut self) -> i64 {
        self.current = i64::MAX;
        i64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(max_out_of_order: u64, step: u64) -> WatermarkGen {
        WatermarkGen::new(WatermarkSpec {
            max_out_of_order,
            step,
            ..WatermarkSpec::default()
        })
    }

    #[test]
    fn an_idle_input_moves_the_watermark_on_with_the_clock() {
        let mut g = gen(5, 10);
        assert_eq!(g.idle(1000), None, "no event read yet");
        assert_eq!(g.observe(100), Some(90));
        assert_eq!(g.idle(4), None, "100 + 4 - 5 rounds down to 90");
        assert_eq!(g.idle(25), Some(120), "100 + 25 - 5");
        assert_eq!(g.idle(20), None, "never back");
        assert_eq!(g.observe(110), None, "the largest time read is still 110");
        assert_eq!(g.idle(30), Some(130), "110 + 30 - 5, rounded down");
        let mut g = WatermarkGen::resume(g.spec, 130);
        assert_eq!(g.idle(10), Some(140), "resumed: 135 read at least");
        g.end();
        assert_eq!(g.idle(u64::MAX), None, "after the end");
        let mut g = gen(0, 1);
        g.observe(i64::MAX - 10);
        assert_eq!(
            g.idle(u64::MAX),
            Some(i64::MAX - 1),
            "saturates below the end"
        );
    }

    #[test]
    fn late_is_below_the_watermark_minus_the_allowed_lateness() {
        let spec = |allowed_lateness, late| WatermarkSpec {
            max_out_of_order: 5,
            step: 1,
            allowed_lateness,
            late,
            idle_timeout_ms: None,
        };
        let mut g = WatermarkGen::new(spec(0, LatePolicy::DeadLetter));
        assert_eq!(g.judge(Some(i64::MIN)), Verdict::OnTime, "no watermark yet");
        assert_eq!(g.observe(20), Some(15));
        assert_eq!(g.judge(None), Verdict::OnTime, "no time");
        assert_eq!(g.judge(Some(15)), Verdict::OnTime, "at the watermark");
        assert_eq!(
            g.judge(Some(14)),
            Verdict::DeadLetter(
                "late event: time 14 is below the watermark 15 minus allowed_lateness 0".into()
            )
        );
        let mut g = WatermarkGen::resume(spec(3, LatePolicy::Drop), 15);
        assert_eq!(g.judge(Some(12)), Verdict::OnTime, "15 - 3");
        assert_eq!(g.judge(Some(11)), Verdict::Drop);
        assert_eq!(g.judge(Some(i64::MIN)), Verdict::Drop);
        g.end();
        assert_eq!(g.judge(Some(i64::MAX - 3)), Verdict::OnTime);
        assert_eq!(g.judge(Some(100)), Verdict::Drop, "after the end");
        let g = WatermarkGen::resume(spec(u64::MAX, LatePolicy::Deliver), 15);
        assert_eq!(g.judge(Some(i64::MIN)), Verdict::OnTime, "no overflow");
        let mut g = WatermarkGen::resume(spec(0, LatePolicy::Deliver), 15);
        assert_eq!(g.judge(Some(14)), Verdict::Deliver);
        g.end();
        assert_eq!(
            WatermarkGen::resume(spec(0, LatePolicy::DeadLetter), i64::MAX).judge(Some(1)),
            Verdict::DeadLetter(
                "late event: time 1 is below the watermark 9223372036854775807 (the input had ended) minus allowed_lateness 0".into()
            )
        );
    }

    #[test]
    fn advances_with_the_largest_time_minus_the_bound() {
        let mut g = gen(5, 1);
        assert_eq!(g.observe(10), Some(5));
        assert_eq!(g.observe(8), None, "an earlier time does not move it");
        assert_eq!(g.observe(10), None, "nor the same one");
        assert_eq!(g.observe(11), Some(6));
        assert_eq!(g.end(), i64::MAX);
        assert_eq!(g.current(), i64::MAX);
        assert_eq!(g.observe(100), None, "nothing after the end");
        let mut g = WatermarkGen::resume(g.spec, 6);
        assert_eq!(g.observe(11), None, "resumed where the checkpoint left it");
        assert_eq!(g.observe(12), Some(7));
    }

    #[test]
    fn rounds_down_to_the_step() {
        let mut g = gen(0, 1000);
        assert_eq!(g.observe(999), Some(0));
        assert_eq!(g.observe(1999), Some(1000));
        assert_eq!(g.observe(1500), None);
        assert_eq!(g.observe(2000), Some(2000));
        let mut g = gen(0, 10);
        assert_eq!(g.observe(-1), Some(-10), "negative times round down too");
    }

    #[test]
    fn saturates_at_the_ends() {
        let mut g = gen(u64::MAX, 1);
        assert_eq!(g.observe(-10), None, "saturates at the minimum");
        assert_eq!(g.observe(0), Some(i64::MIN + 1));
        assert_eq!(g.observe(i64::MAX), Some(0));
        let mut g = gen(0, 10);
        assert_eq!(g.observe(i64::MAX), Some(i64::MAX - 7));
        let mut g = gen(0, 1);
        assert_eq!(
            g.observe(i64::MAX),
            Some(i64::MAX - 1),
            "only the end reaches i64::MAX"
        );
        assert_eq!(g.observe(i64::MIN), None);
    }
}
