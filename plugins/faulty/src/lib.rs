//! Counts events per key and misbehaves on request; see README.md.

use eddy_sdk::{emit, Config, Error, Event, List, Map, Operator, Value};
use serde::Deserialize;

const N: Value<u64> = Value::new("n");
const BIG: Value<String> = Value::new("big");
const M: Map<u64> = Map::new("m");
const L: List<String> = List::new("l");

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    action: String,
    /// Bytes of the name, field, key, reason or value an action makes.
    #[serde(default = "one_mib")]
    size: usize,
    /// How many times an action repeats.
    #[serde(default = "one")]
    count: usize,
    /// Take the per-event path: touch map state first (in a batch the SDK
    /// then hands the event to `handle`).
    #[serde(default)]
    per_event: bool,
}

fn one_mib() -> usize {
    1 << 20
}

fn one() -> usize {
    1
}

/// A state handle with a name made at run time (test operator: leaks it).
fn value<T: serde::Serialize + serde::de::DeserializeOwned>(name: String) -> Value<T> {
    Value::new(Box::leak(name.into_boxed_str()))
}

#[link(wasm_import_module = "wasi:random/random@0.2.0")]
extern "C" {
    /// `wasi:random/random.get-random-u64` (std links the interface's type
    /// information, as the `getrandom` crate relies on too).
    #[link_name = "get-random-u64"]
    fn get_random_u64() -> u64;
}

struct Faulty;

impl Operator for Faulty {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Faulty)
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let p: Payload = event.json()?;
        if p.per_event {
            M.get("per-event")?;
        }
        let n = N.get()?.unwrap_or(0) + 1;
        N.set(&n)?;
        emit(event.key, &serde_json::json!({ "n": n }))?;
        match p.action.as_str() {
            "trap" => panic!("asked to trap on key {}", event.key),
            "loop" => loop {
                std::hint::black_box(&n);
            },
            "alloc" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "error" => Err(Error::msg(format!("asked to fail on key {}", event.key))),
            "big-state" => BIG.set(&"x".repeat(2 << 20)),
            "big-emit" => emit(event.key, &"x".repeat(2 << 20)),
            // Limits on what is not a value: names, fields, keys, reasons.
            "long-name" => value(format!("n{}", "x".repeat(p.size))).set(&1u8),
            "long-field" => M.set(&"f".repeat(p.size), &1),
            "long-key" => emit(&"k".repeat(p.size), &1),
            "long-error" => Err(Error::msg("e".repeat(p.size))),
            // `count` emits of `size` bytes each.
            "many-emits" => {
                let payload = "x".repeat(p.size);
                for _ in 0..p.count {
                    emit(event.key, &payload)?;
                }
                Ok(())
            }
            // The key's state grows by `size` bytes: a list item (per-event
            // path) or a new value (batched path).
            "grow-list" => L.push(&"x".repeat(p.size)).map(drop),
            "grow-value" => value(format!("g{n}")).set(&"x".repeat(p.size)),
            // Rewrites one value `count` times.
            "rewrite" => {
                for i in 0..p.count {
                    BIG.set(&format!("{i}{}", "x".repeat(p.size)))?;
                }
                Ok(())
            }
            // Emits a random number (`wasi:random`), `count` times.
            "random" => {
                for _ in 0..p.count {
                    // SAFETY: a WASI import without arguments.
                    let r = unsafe { get_random_u64() };
                    emit(event.key, &serde_json::json!({ "random": r }))?;
                }
                Ok(())
            }
            "probe" => {
                // What the sandbox lets an operator see of its host.
                let env = std::env::vars().count();
                let fs = match std::fs::read_dir("/") {
                    Ok(_) => "readable".to_string(),
                    Err(e) => e.to_string(),
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(u64::MAX);
                let net = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
                emit(
                    event.key,
                    &serde_json::json!({ "env": env, "fs": fs, "now": now, "net": net }),
                )
            }
            _ => Ok(()),
        }
    }
}

eddy_sdk::export_operator!(Faulty);
