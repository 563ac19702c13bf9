//! The per-operator limits of the pipeline file (`[[operator]]` table).

/// Per-operator limits enforced on host calls. Each is named in the
/// pipeline file's `[[operator]]` table by the field given here, and an
/// event that breaks one is dead-lettered with an error naming that field.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single state value, map field value or list item, in bytes
    /// (`max_state_value_bytes`).
    pub max_state_value: usize,
    /// Largest emitted payload, in bytes (`max_emit_bytes`).
    pub max_emit: usize,
    /// CPU budget of one call into the operator (`init` or `handle`), in
    /// milliseconds of wall time; enforced at 10 ms granularity
    /// (`max_call_ms`).
    pub max_call_ms: u64,
    /// Whether `max_call_ms` is enforced (`cpu_limit`, on by default). Off,
    /// the operator's code runs without the engine's per-call interruption
    /// checks, which cost Wasm operators 15-20% of their speed: for trusted
    /// code only, since a call that never returns then stalls its worker
    /// for good.
    pub cpu_limit: bool,
    /// Largest linear memory of one operator instance, in bytes; what the
    /// host holds for one event (its emits, and the state it replaced,
    /// kept to undo it) counts against it too (`max_memory_bytes`).
    pub max_memory: usize,
    /// Longest state name or map field, in bytes (`max_name_bytes`).
    pub max_name: usize,
    /// Longest emitted key, in bytes (`max_emit_key_bytes`).
    pub max_emit_key: usize,
    /// Most bytes one event may emit, keys and payloads together
    /// (`max_emit_bytes_per_event`).
    pub max_emit_per_event: usize,
    /// Most state one key may hold, in bytes as stored: names, values, map
    /// fields and list items with their length prefixes
    /// (`max_key_state_bytes`). An event that grows a key past it fails.
    pub max_key_state: usize,
    /// Longest error reason (or log line) kept from an operator; longer
    /// ones are truncated with a note of how much was cut
    /// (`max_reason_bytes`).
    pub max_reason: usize,
    /// Most pending timers one key may hold (`max_timers_per_key`); a call
    /// that sets one more fails.
    pub max_timers_per_key: usize,
    /// Long lists and big maps spill to rows of their own (not a pipeline
    /// file setting: Kafka group mode turns it off, its changelog topics
    /// carry whole records).
    pub spill: bool,
    /// The keys in the state directory are this process's when it starts,
    /// so their pending timers are loaded then (not a pipeline file
    /// setting: in Kafka group mode a process owns no key until the group
    /// assigns it partitions, and their timers are loaded then; a timer
    /// of a key another process owns now must never fire here).
    pub owned_at_start: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_state_value: 1 << 20,
            max_emit: 1 << 20,
            max_call_ms: 1000,
            cpu_limit: true,
            max_memory: 256 << 20,
            max_name: 4 << 10,
            max_emit_key: 4 << 10,
            max_emit_per_event: 16 << 20,
            max_key_state: 64 << 20,
            max_reason: 16 << 10,
            max_timers_per_key: 1024,
            spill: true,
            owned_at_start: true,
        }
    }
}
