//! Test hooks: make the start of replacement instances fail, which no
//! component can do on its own (`init` is deterministic: a replacement
//! starts exactly like the first instance did).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Some hook is set (spares the lock on every restart).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Per operator name: how many more replacement starts to refuse.
static REFUSE: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// Makes the next `n` starts of a replacement instance of operator
/// `operator` (any worker) fail as if its `init` refused its config.
/// First instances are not affected.
pub fn fail_restarts(operator: &str, n: u32) {
    let mut r = REFUSE.lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|(o, _)| o != operator);
    r.push((operator.to_string(), n));
    ARMED.store(true, Ordering::Release);
}

/// Whether to refuse this start of `operator`: the reason, and one
/// refusal fewer.
pub(super) fn refuse(operator: &str) -> Option<String> {
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    let mut r = REFUSE.lock().unwrap_or_else(|e| e.into_inner());
    let (_, n) = r.iter_mut().find(|(o, n)| o == operator && *n > 0)?;
    *n -= 1;
    Some("refused by a test hook (wasm::testing::fail_restarts)".into())
}
