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
}

impl WatermarkGen {
    /// A generator before any event.
    pub fn new(spec: WatermarkSpec) -> WatermarkGen {
        WatermarkGen {
            spec,
            current: i64::MIN,
        }
    }

    /// A generator resuming at watermark `w` (from a checkpoint).
    pub fn resume(spec: WatermarkSpec, w: i64) -> WatermarkGen {
        WatermarkGen { spec, current: w }
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
    fn late_is_below_the_watermark_minus_the_allowed_lateness() {
        let spec = |allowed_lateness, late| WatermarkSpec {
            max_out_of_order: 5,
            step: 1,
            allowed_lateness,
            late,
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
