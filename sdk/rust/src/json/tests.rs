//! The fast paths against serde_json: for generated and mutated documents
//! and values, `from_slice` and `to_writer` must give what serde_json gives
//! (the same value, the same bytes, the same error text).

use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Purchase {
    #[serde(default)]
    amount: f64,
    key: Option<String>,
    ts: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
struct Totals {
    count: u64,
    sum: f64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Kind {
    View,
    Buy,
    Note(String),
    Pair(u8, i16),
    Move { x: i32, y: f32 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Tagged {
    Scan { at: String, late: bool },
    Delivered,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
enum Loose {
    Number(f64),
    Text(String),
    List(Vec<Loose>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Strict {
    id: u32,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Wide {
    small: i8,
    big: u64,
    neg: i64,
    wide: i128,
    single: f32,
    flag: bool,
    letter: char,
    tags: Vec<String>,
    scores: BTreeMap<String, f64>,
    by_id: BTreeMap<u64, String>,
    kinds: Vec<Kind>,
    pair: (u8, String),
    unit: (),
    nothing: Option<u8>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Borrowed<'a> {
    key: &'a str,
    #[serde(default)]
    amount: f64,
}

/// Both decoders on `text`: the same value (by its `Debug` form, which
/// tells -0.0 from 0.0) or the same error text.
fn same_decode<'a, T: Deserialize<'a> + Debug>(text: &'a [u8]) {
    let fast = super::from_slice::<T>(text).map_err(|e| e.to_string());
    let slow = serde_json::from_slice::<T>(text).map_err(|e| e.to_string());
    assert_eq!(
        format!("{fast:?}"),
        format!("{slow:?}"),
        "decoding {:?} as {}",
        String::from_utf8_lossy(text),
        std::any::type_name::<T>()
    );
}

fn decode_all(text: &[u8]) {
    same_decode::<Value>(text);
    same_decode::<Purchase>(text);
    same_decode::<Totals>(text);
    same_decode::<Kind>(text);
    same_decode::<Tagged>(text);
    same_decode::<Loose>(text);
    same_decode::<Strict>(text);
    same_decode::<Wide>(text);
    same_decode::<Borrowed<'_>>(text);
    same_decode::<BTreeMap<String, Value>>(text);
    same_decode::<Vec<f64>>(text);
    same_decode::<f32>(text);
    same_decode::<f64>(text);
    same_decode::<u64>(text);
    same_decode::<i64>(text);
    same_decode::<String>(text);
    same_decode::<Option<bool>>(text);
}

/// Both encoders on `value`: the same bytes or the same error text.
fn same_encode<T: Serialize + Debug + ?Sized>(value: &T) {
    let mut fast = b"prefix".to_vec();
    let fast_result = super::to_writer(&mut fast, value).map_err(|e| e.to_string());
    let mut slow = b"prefix".to_vec();
    let slow_result = serde_json::to_writer(&mut slow, value).map_err(|e| e.to_string());
    assert_eq!(fast_result, slow_result, "encoding {value:?}");
    if slow_result.is_ok() {
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&slow),
            "encoding {value:?}"
        );
    } else {
        assert_eq!(
            fast, b"prefix",
            "a failed encoding leaves the buffer as it was"
        );
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 _-]{0,12}",
        "[a-zé😀\\\\\"\u{1}\n\t/]{0,6}",
        any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
        "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?",
        "-?[0-9]{1,3}(\\.[0-9]{0,3})?[eE.]?[0-9]{0,2}",
        Just("-0".to_string()),
        Just("-0.0".to_string()),
        Just("9007199254740993".to_string()),
        Just("9007199254740993.0".to_string()),
        Just("1e22".to_string()),
        Just("1e23".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_filter_map("a JSON number", |n| serde_json::from_str(&n).ok()),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("amount".to_string()),
                        Just("key".to_string()),
                        Just("count".to_string()),
                        Just("sum".to_string()),
                        Just("type".to_string()),
                        text()
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A document and edits of it (bytes changed, removed, inserted) that make
/// many of them invalid in the ways real input is.
fn document() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json().prop_map(|v| serde_json::to_vec_pretty(&v).unwrap()),
        (text(), number(), any::<i64>()).prop_map(|(k, n, ts)| {
            format!(
                "{{\"key\":{},\"amount\":{n},\"ts\":{ts}}}",
                serde_json::to_string(&k).unwrap()
            )
            .into_bytes()
        }),
        (any::<u64>(), number())
            .prop_map(|(c, s)| format!("{{\"count\":{c},\"sum\":{s}}}").into_bytes()),
        number().prop_map(String::into_bytes),
    ];
    let edit = (
        any::<prop::sample::Index>(),
        0u8..4,
        prop::sample::select(b"{}[]\",:0-.e \\nx\x01".to_vec()),
    );
    (base, prop::collection::vec(edit, 0..3)).prop_map(|(mut doc, edits)| {
        for (at, what, byte) in edits {
            let i = if doc.is_empty() {
                0
            } else {
                at.index(doc.len())
            };
            match what {
                0 if !doc.is_empty() => doc[i] = byte,
                1 if !doc.is_empty() => {
                    doc.remove(i);
                }
                2 => doc.insert(i, byte),
                _ => doc.truncate(i),
            }
        }
        doc
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_gives_what_serde_json_gives(doc in document()) {
        decode_all(&doc);
    }

    #[test]
    fn encoding_gives_what_serde_json_gives(v in json()) {
        same_encode(&v);
    }

    #[test]
    fn floats_are_written_as_serde_json_writes_them(bits in any::<u64>(), int in -2_000_000_000_000_000i64..2_000_000_000_000_000, small in -100_000i64..100_000) {
        same_encode(&f64::from_bits(bits));
        same_encode(&(int as f64));
        same_encode(&(small as f64));
        same_encode(&(small as f64 / 8.0));
        same_encode(&f32::from_bits(bits as u32));
    }

    #[test]
    fn typed_values_round_trip_as_serde_json(count in any::<u64>(), sum in any::<f64>(), name in text(), tags in prop::collection::vec(text(), 0..4), x in any::<i32>(), y in any::<f32>()) {
        let totals = Totals { count, sum };
        same_encode(&totals);
        let wide = Wide {
            small: x as i8,
            big: count,
            neg: -(x as i64),
            wide: i128::from(count) * -3,
            single: y,
            flag: x % 2 == 0,
            letter: name.chars().next().unwrap_or('"'),
            tags: tags.clone(),
            scores: tags.iter().map(|t| (t.clone(), sum)).collect(),
            by_id: tags.iter().enumerate().map(|(i, t)| (i as u64, t.clone())).collect(),
            kinds: vec![Kind::View, Kind::Note(name.clone()), Kind::Pair(x as u8, x as i16), Kind::Move { x, y }],
            pair: (x as u8, name.clone()),
            unit: (),
            nothing: None,
        };
        same_encode(&wide);
        let text = serde_json::to_vec(&wide).unwrap();
        same_decode::<Wide>(&text);
        same_encode(&Strict { id: x as u32, name: name.clone(), note: tags.first().cloned() });
        same_encode(&[Tagged::Scan { at: name, late: true }, Tagged::Delivered]);
        same_encode(&Loose::List(vec![Loose::Number(sum), Loose::Text(String::new())]));
        let mut by_bool = BTreeMap::new();
        by_bool.insert(x > 0, sum);
        same_encode(&by_bool);
    }
}

#[test]
fn the_usual_shapes_decode_on_the_fast_path() {
    // Not only equal to serde_json: decoded without it (the fast path
    // succeeds), so operators get the speed.
    let mut de =
        super::de::Deserializer::new(br#"{"key":"user-1","amount":12.5,"ts":1700000000000}"#);
    let p = Purchase::deserialize(&mut de).expect("fast path");
    de.end().expect("nothing after the object");
    assert_eq!(p.amount, 12.5);
    assert_eq!(p.key.as_deref(), Some("user-1"));
    let mut de = super::de::Deserializer::new(br#" {"count": 3, "sum": -0.25e1} "#);
    let t = Totals::deserialize(&mut de).expect("fast path");
    assert_eq!((t.count, t.sum), (3, -2.5));
}

#[test]
fn errors_are_serde_json_errors() {
    let e = super::from_slice::<Totals>(br#"{"count":"three"}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid type: string \"three\", expected u64 at line 1 column 16"
    );
    let e = super::from_slice::<Totals>(br#"{"count":1,"sum":2,}"#).unwrap_err();
    assert_eq!(e.to_string(), "trailing comma at line 1 column 20");
    let mut map = BTreeMap::new();
    map.insert(vec![1u8], 2u8);
    let mut out = b"kept".to_vec();
    let e = super::to_writer(&mut out, &map).unwrap_err();
    assert_eq!(e.to_string(), "key must be a string");
    assert_eq!(out, b"kept");
}
