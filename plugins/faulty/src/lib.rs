//! Counts events per key and misbehaves on request; see README.md.

use eddy_sdk::{emit, Config, Error, Event, Operator, Value};
use serde::Deserialize;

const N: Value<u64> = Value::new("n");
const BIG: Value<String> = Value::new("big");

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    action: String,
}

struct Faulty;

impl Operator for Faulty {
    fn init(_config: Config) -> Result<Self, Error> {
        Ok(Faulty)
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        let p: Payload = event.json()?;
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
