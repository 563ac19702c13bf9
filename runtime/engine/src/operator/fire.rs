//! Firing the timers due at a watermark: each in its own bracket, as an
//! event is handled, in (time, key, name) order.

use super::{Emits, HandleError, Operator, RunError, TimerRef};

/// Called as each firing completes: the timer (key, name, time), its
/// outcome, and what it emitted (drained by the callee's caller).
pub type FireDone<'a> = dyn FnMut(&str, &str, i64, Result<(), HandleError>, &mut Emits) + 'a;

/// At the end of the input (watermark `i64::MAX`) timers set by the
/// handlers of fired ones fire too, round after round, at most this many
/// rounds (a handler that keeps setting timers cannot hold the end of the
/// input forever); what is left stays pending.
pub const END_ROUNDS: usize = 16;

/// Advances `op`'s watermark to `w` and fires its timers due there: those
/// set for a time below `w` (at `i64::MAX`, all), in (time, key, name)
/// order, each consumed whatever its handler does. Timers set while firing
/// fire at the next advance (at the end of the input, in the next round).
/// `line` is the input line of the advance. Returns how many fired.
pub fn fire_due<O: Operator + ?Sized>(
    op: &mut O,
    w: i64,
    line: u64,
    done: &mut FireDone<'_>,
) -> Result<usize, RunError> {
    op.ctx().set_watermark(w);
    let mut fired = 0;
    let mut emitted = Emits::default();
    for _ in 0..END_ROUNDS {
        let due = op.ctx().pop_due(w);
        if due.is_empty() {
            break;
        }
        for (at, key, name, _) in due {
            fired += 1;
            if let Err(e) = op.ready(&key)? {
                done(&key, &name, at, Err(e), &mut emitted);
                emitted.clear();
                continue;
            }
            op.ctx().set_event_time(Some(at));
            op.ctx().begin(&key)?;
            let mut r = op.on_timer(TimerRef {
                key: &key,
                name: &name,
                at,
                line,
            });
            if r.is_ok() {
                if let Err(refused) = op.ctx().check_event() {
                    r = Err(HandleError::Refused(refused.to_string()));
                }
            }
            op.ctx().finish(r.is_ok(), &mut emitted);
            done(&key, &name, at, r, &mut emitted);
            emitted.clear();
        }
        if w != i64::MAX {
            break;
        }
    }
    Ok(fired)
}
