//! Output and dead-letter lines: JSON values inline, other text quoted,
//! other bytes in base64, so no byte is ever altered.

/// Appends `{"key":<key>,"value":<value>}\n` to `buf`: the value inline when
/// it is JSON on one line, as a JSON string when it is other UTF-8 text,
/// and as `"value_base64":"<base64>"` when it is not UTF-8.
pub fn format_output(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut *buf, key).expect("writing to a Vec cannot fail");
    buf.push(b',');
    push_field(buf, "value", value);
    buf.extend_from_slice(b"}\n");
}

/// Appends the JSON object member `"name":<value>`: `value` inline when it
/// is single-line JSON, else as a JSON string when it is UTF-8; when it is
/// not UTF-8, `"name_base64":"<base64 of the bytes>"` instead, so that no
/// byte is lost or replaced.
pub fn push_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    // The common case first: single-line JSON (its syntax checked without
    // UTF-8, then UTF-8 checked only when there is a non-ASCII byte).
    let is_json = memchr::memchr2(b'\n', b'\r', value).is_none()
        && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
    if is_json && (value.is_ascii() || std::str::from_utf8(value).is_ok()) {
        push_name(buf, name);
        buf.extend_from_slice(value);
    } else {
        push_string_field(buf, name, value);
    }
}

/// Appends `"name":"<value as a JSON string>"` when `value` is UTF-8, else
/// `"name_base64":"<base64 of the bytes>"`.
pub fn push_string_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => {
            push_name(buf, name);
            serde_json::to_writer(&mut *buf, text).expect("writing to a Vec cannot fail");
        }
        Err(_) => push_base64_field(buf, name, value),
    }
}

/// Appends `"name":` (`name` is a plain identifier).
fn push_name(buf: &mut Vec<u8>, name: &str) {
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

#[cold]
fn push_base64_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"_base64\":\"");
    push_base64(buf, value);
    buf.push(b'"');
}

/// Appends the standard (RFC 4648, padded) base64 of `data`.
pub fn push_base64(buf: &mut Vec<u8>, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    buf.reserve(data.len().div_ceil(3) * 4);
    let (chunks, rest) = data.as_chunks::<3>();
    for &[a, b, c] in chunks {
        let n = u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c);
        buf.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *rest {
        [a] => {
            let n = u32::from(a) << 16;
            buf.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            buf.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_inline_json_and_quote_the_rest() {
        let mut b = Vec::new();
        format_output(&mut b, "k\"1", br#"{"n":1}"#);
        format_output(&mut b, "k2", b"plain text");
        format_output(&mut b, "k3", b"{\n\"n\":1}");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "{\"key\":\"k\\\"1\",\"value\":{\"n\":1}}\n{\"key\":\"k2\",\"value\":\"plain text\"}\n{\"key\":\"k3\",\"value\":\"{\\n\\\"n\\\":1}\"}\n"
        );
    }

    #[test]
    fn values_that_are_not_utf8_are_written_as_base64_not_altered() {
        let mut b = Vec::new();
        format_output(&mut b, "k", b"\xff\xfe ok");
        // Inside a JSON string too: never inlined as invalid UTF-8.
        format_output(&mut b, "k", b"\"\xc3\x28\"");
        format_output(&mut b, "k", "\"caf\u{e9}\"".as_bytes());
        let text = String::from_utf8(b).unwrap();
        assert_eq!(
            text,
            "{\"key\":\"k\",\"value_base64\":\"//4gb2s=\"}\n\
             {\"key\":\"k\",\"value_base64\":\"IsMoIg==\"}\n\
             {\"key\":\"k\",\"value\":\"caf\u{e9}\"}\n"
        );
        let mut d = Vec::new();
        push_string_field(&mut d, "payload", b"ok \"x\"");
        d.push(b',');
        push_string_field(&mut d, "payload", b"\x80");
        assert_eq!(
            d,
            b"\"payload\":\"ok \\\"x\\\"\",\"payload_base64\":\"gA==\""
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut b = Vec::new();
            push_base64(&mut b, raw.as_bytes());
            assert_eq!(b, enc.as_bytes(), "{raw}");
        }
        let mut b = Vec::new();
        push_base64(&mut b, &[0xfb, 0xff, 0xbf]);
        assert_eq!(b, b"+/+/");
    }
}

/// How workers hand emitted events and dead letters to the sink.
#[derive(Debug, Clone, Default)]
pub struct Formats {
    /// Emitted events as [`frame_output`] records (for a Kafka sink, which
    /// needs the key and value apart), not JSON lines.
    pub framed: bool,
    /// The input is Kafka: an event's position is [`kafka_pos`] of its
    /// partition (an index into these `(topic, partition)`) and offset,
    /// and dead letters name them instead of a line.
    pub kafka_parts: Option<std::sync::Arc<[(String, i32)]>>,
    /// Kafka group mode with a chain: what an operator emits for the next
    /// one goes to that one's repartition topic (so it reaches the process
    /// that owns the new key), not straight to the next operator.
    pub repartition: bool,
}

/// Appends an emitted event as the framed record a Kafka sink reads:
/// the key's length (u32, little-endian), the key, the value's length, the
/// value.
pub fn frame_output(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(value);
}

/// Appends an event emitted for operator `stage` of a chain, bound for
/// its repartition topic (Kafka group mode): the stage (u16), the event
/// time (a presence byte, then i64; all little-endian), then the key and
/// value as [`frame_output`] frames them.
pub fn frame_repartition(
    buf: &mut Vec<u8>,
    stage: u16,
    time: Option<i64>,
    key: &str,
    value: &[u8],
) {
    buf.extend_from_slice(&stage.to_le_bytes());
    buf.push(time.is_some() as u8);
    buf.extend_from_slice(&time.unwrap_or(0).to_le_bytes());
    frame_output(buf, key, value);
}

/// The records [`frame_repartition`] framed in `buf`: `(stage, time, key,
/// value)`, in order.
pub fn unframe_repartition(buf: &[u8]) -> impl Iterator<Item = (u16, Option<i64>, &[u8], &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let stage = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
        let has = *rest.get(2)? == 1;
        let time = i64::from_le_bytes(rest.get(3..11)?.try_into().ok()?);
        rest = &rest[11..];
        let mut take = || -> Option<&[u8]> {
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let v = rest.get(4..4 + n)?;
            rest = &rest[4 + n..];
            Some(v)
        };
        let key = take()?;
        let value = take()?;
        Some((stage, has.then_some(time), key, value))
    })
}

/// The framed records in `buf` as `(key, value)`, in order.
pub fn unframe(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let mut take = || -> Option<&[u8]> {
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let v = rest.get(4..4 + n)?;
            rest = &rest[4 + n..];
            Some(v)
        };
        Some((take()?, take()?))
    })
}

/// The position of a Kafka record for events and dead letters: its
/// partition's index (high 16 bits) and offset (low 48 bits).
pub fn kafka_pos(part: u16, offset: i64) -> u64 {
    ((part as u64) << 48) | (offset as u64 & ((1 << 48) - 1))
}

impl Formats {
    /// Dead letter `rec` names its event's position as `"line"`: for a
    /// Kafka input, that becomes `"topic"`, `"partition"` and `"offset"`.
    pub fn position(&self, rec: &mut serde_json::Value) {
        let (Some(parts), Some(obj)) = (&self.kafka_parts, rec.as_object_mut()) else {
            return;
        };
        let Some(pos) = obj.remove("line").and_then(|v| v.as_u64()) else {
            return;
        };
        let (i, offset) = ((pos >> 48) as usize, pos & ((1 << 48) - 1));
        if let Some((topic, partition)) = parts.get(i) {
            obj.insert("topic".into(), topic.as_str().into());
            obj.insert("partition".into(), (*partition).into());
        }
        obj.insert("offset".into(), offset.into());
    }

    /// Appends emitted event `(key, value)` for the sink.
    pub fn output(&self, buf: &mut Vec<u8>, key: &str, value: &[u8]) {
        if self.framed {
            frame_output(buf, key, value)
        } else {
            format_output(buf, key, value)
        }
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn repartition_frames_round_trip() {
        let mut b = Vec::new();
        frame_repartition(&mut b, 1, Some(-5), "k", b"v1");
        frame_repartition(&mut b, 2, None, "", b"");
        let got: Vec<_> = unframe_repartition(&b).collect();
        assert_eq!(
            got,
            vec![
                (1, Some(-5), &b"k"[..], &b"v1"[..]),
                (2, None, &b""[..], &b""[..])
            ]
        );
    }

    #[test]
    fn frames_round_trip() {
        let mut b = Vec::new();
        frame_output(&mut b, "k1", b"{\"a\":1}");
        frame_output(&mut b, "", b"");
        frame_output(&mut b, "\u{e9}", &[0xff, 0]);
        let got: Vec<_> = unframe(&b).collect();
        assert_eq!(
            got,
            vec![
                (&b"k1"[..], &b"{\"a\":1}"[..]),
                (&b""[..], &b""[..]),
                ("\u{e9}".as_bytes(), &[0xff, 0][..])
            ]
        );
    }

    #[test]
    fn kafka_positions_name_topic_partition_offset() {
        let f = Formats {
            framed: true,
            kafka_parts: Some(vec![("a".to_string(), 0), ("b".to_string(), 7)].into()),
            repartition: false,
        };
        let mut rec = serde_json::json!({"error": "x", "line": kafka_pos(1, 12345)});
        f.position(&mut rec);
        assert_eq!(
            rec,
            serde_json::json!({"error": "x", "topic": "b", "partition": 7, "offset": 12345})
        );
        let mut rec = serde_json::json!({"line": 9});
        Formats::default().position(&mut rec);
        assert_eq!(rec, serde_json::json!({"line": 9}));
    }
}
