//! The deterministic `wasi:random` of an instance (see the module docs of
//! [`crate::operator::wasm`]): seeded per scope from the operator's name,
//! the event's key and line; drawing inside `handle-batch` traps.

use super::HostData;

type HostResult<T> = wasmtime::Result<T>;

/// What `wasi:random` numbers are being drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Instantiation and `init`.
    Start,
    /// `handle` of an event from input line `line` (the key is the
    /// context's current key).
    Event { line: u64 },
    /// `migrate` of the context's current key.
    Migrate,
    /// A `handle-batch` call: drawing traps.
    Batch,
}

/// The deterministic generator behind `wasi:random` of one instance.
pub(super) struct Random {
    pub(super) scope: Scope,
    /// SplitMix64 state, seeded on the first draw in a scope.
    pub(super) state: Option<u64>,
    /// Numbers were asked for during a `handle-batch` call.
    pub(super) wanted_in_batch: bool,
}

impl Default for Random {
    fn default() -> Self {
        Random {
            scope: Scope::Start,
            state: None,
            wanted_in_batch: false,
        }
    }
}

impl Random {
    /// Draws from here on are for `scope` (cheap: seeding waits for the
    /// first draw).
    pub(super) fn enter(&mut self, scope: Scope) {
        self.scope = scope;
        self.state = None;
    }
}

/// SplitMix64's output function: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from the given parts (FNV-1a over each part and its length, then
/// mixed): stable across runs, processes and versions of the host.
pub(super) fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    mix64(h)
}

impl HostData {
    /// The next 64 random bits for the current scope; traps inside
    /// `handle-batch` (the batch is then replayed event by event).
    fn next_random(&mut self) -> wasmtime::Result<u64> {
        let state = match self.random.state {
            Some(state) => state,
            None => {
                let scope = self.random.scope;
                // Which of the events of this key and line drawing numbers
                // this one is.
                let n = match scope {
                    Scope::Event { line } => {
                        let key = seed_of(&[self.ctx.current_key().unwrap_or("").as_bytes()]);
                        self.ctx.draw_index(line, key)
                    }
                    _ => 0,
                };
                let name = self.ctx.name().as_bytes();
                let key = self.ctx.current_key().unwrap_or("").as_bytes();
                match scope {
                    Scope::Batch => {
                        self.random.wanted_in_batch = true;
                        return Err(wasmtime::Error::msg(
                            "wasi:random called during handle-batch; the batch is replayed event by event",
                        ));
                    }
                    Scope::Start => seed_of(&[b"init", name]),
                    Scope::Migrate => seed_of(&[b"migrate", name, key]),
                    Scope::Event { line } => {
                        seed_of(&[b"event", name, key, &line.to_le_bytes(), &n.to_le_bytes()])
                    }
                }
            }
        };
        let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.random.state = Some(state);
        Ok(mix64(state))
    }

    /// `len` random bytes (at most the instance's memory limit).
    fn random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        if len > self.memory.max as u64 {
            return Err(wasmtime::Error::msg(format!(
                "wasi:random: {len} bytes asked for, more than max_memory_bytes = {}",
                self.memory.max
            )));
        }
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            let word = self.next_random()?.to_le_bytes();
            let n = word.len().min(len as usize - out.len());
            out.extend_from_slice(&word[..n]);
        }
        Ok(out)
    }
}

impl wasmtime_wasi::p2::bindings::random::random::Host for HostData {
    fn get_random_bytes(&mut self, len: u64) -> HostResult<Vec<u8>> {
        self.random_bytes(len)
    }
    fn get_random_u64(&mut self) -> HostResult<u64> {
        self.next_random()
    }
}

impl wasmtime_wasi::p2::bindings::random::insecure::Host for HostData {
    fn get_insecure_random_bytes(&mut self, len: u64) -> HostResult<Vec<u8>> {
        self.random_bytes(len)
    }
    fn get_insecure_random_u64(&mut self) -> HostResult<u64> {
        self.next_random()
    }
}

impl wasmtime_wasi::p2::bindings::random::insecure_seed::Host for HostData {
    fn insecure_seed(&mut self) -> HostResult<(u64, u64)> {
        let name = self.ctx.name().as_bytes();
        Ok((
            seed_of(&[b"insecure-seed", name]),
            seed_of(&[b"insecure-seed-2", name]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are part of what a replay must reproduce: a change to
    /// how they are made changes every operator's random numbers. (The
    /// values were checked against an independent FNV-1a + SplitMix64.)
    #[test]
    fn random_seeds_are_fixed_functions_of_their_parts() {
        assert_eq!(seed_of(&[b"init", b"op"]), seed_of(&[b"init", b"op"]));
        assert_ne!(seed_of(&[b"ab", b"c"]), seed_of(&[b"a", b"bc"]));
        assert_eq!(seed_of(&[b"event", b"op", b"k"]), 0xae1a_7e40_9724_6d6d);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }
}
