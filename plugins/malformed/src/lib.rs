//! Counts events per key, and on request returns a `handle-batch` result
//! the host must refuse; see README.md.

use eddy_codec::{BatchView, ResultBuilder};

wit_bindgen::generate!({
    path: "../../wit",
    world: "batched-operator",
    with: {
        "eddy:operator/batch@0.2.0": eddy_codec::wit,
    },
});

// `Event`, `Batch` and `BatchResult` come from the world's `use`s.
use eddy::operator::{output, state};

struct Malformed;

/// The count after an event, from the stored one.
fn next(stored: Option<&[u8]>) -> u64 {
    stored
        .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
        .unwrap_or(0)
        + 1
}

/// The damage a payload asks for: the text of its `"corrupt":"..."`.
fn corruption(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = &text[text.find(r#""corrupt":""#)? + 11..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Damages `r` as `how` says (see README.md).
fn damage(r: &mut BatchResult, how: &str) {
    match how {
        "end" => r.emit_keys.ends[0] = u32::MAX,
        "count" => r.emit_counts[0] += 1,
        "utf8" => r.write_names.bytes[0] = 0xff,
        "extra" => {
            r.emit_counts.push(0);
            r.write_counts.push(0);
        }
        "stop" => r.stop = true,
        "order" => {
            r.emit_counts[..2].fill(0);
            r.write_counts[..2].fill(0);
            r.failed = vec![1, 0];
            r.reasons.push(b"one");
            r.reasons.push(b"zero");
        }
        _ => {}
    }
}

impl Guest for Malformed {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn handle(event: Event) -> Result<(), String> {
        let n = next(state::get("n").as_deref());
        state::set("n", n.to_string().as_bytes());
        let out = format!(r#"{{"n":{n},"path":"event"}}"#);
        output::emit(&event.key, out.as_bytes());
        Ok(())
    }

    fn handle_batch(batch: Batch) -> BatchResult {
        let view = BatchView::new(&batch).expect("the host sends well-formed batches");
        // Per key of the batch: its count so far.
        let mut counts: Vec<u64> = view
            .keys()
            .map(|k| {
                k.values
                    .map(|i| view.value(i))
                    .find(|(name, _)| *name == "n")
                    .map_or(0, |(_, bytes)| next(Some(bytes)) - 1)
            })
            .collect();
        let mut out = ResultBuilder::new();
        let mut how = None;
        for e in view.events() {
            let k = e.key as usize;
            counts[k] += 1;
            let n = counts[k];
            let key = view.key(k).unwrap_or_default();
            out.emit(key, format!(r#"{{"n":{n},"path":"batch"}}"#).as_bytes());
            out.write(b"n", Some(n.to_string().as_bytes()));
            out.ok();
            how = how.or_else(|| corruption(e.payload));
        }
        let mut result = out.finish();
        if let Some(how) = how {
            damage(&mut result, &how);
        }
        result
    }
}

export!(Malformed);
