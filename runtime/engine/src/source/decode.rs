//! Decoding one JSON Lines input line: find the key (and event time) without
//! building the whole document.
//!
//! # Keys
//!
//! The key field holds a string or a number. A string key is the string's
//! value (escapes resolved). A number key is the number's literal text as
//! written in the line, never converted through a float, so every distinct
//! number keeps its own state:
//!
//! - `12345678901234567890123` and `12345678901234567890124` are two keys;
//! - `1E2` is the key `1E2` (not `100`), `-7` is `-7`, `0.10` is `0.10`;
//! - `1` and `"1"` are the same key (the text `1`);
//! - `1`, `1.0` and `1e0` are three different keys: the literal is the key,
//!   not the numeric value. Write keys the same way every time.
//!
//! Any other JSON type (`true`, `null`, an object, an array) is rejected
//! ([`DecodeError::BadKey`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{Kind, Scanner, Unsure};

/// What a line yields for routing.
#[derive(Debug, PartialEq)]
pub struct Decoded<'a> {
    /// The key, borrowed from the line unless it is a string with escapes
    /// (a number key is its literal text; see the module docs).
    pub key: Cow<'a, str>,
    /// Its event time, when the pipeline names a time field.
    pub time: Option<i64>,
}

/// Why a line was rejected (it goes to the dead-letter output).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("line is not UTF-8 (invalid byte at offset {0})")]
    /// A name or key that is not UTF-8.
    NotUtf8(usize),
    #[error("line is not a JSON object: {0}")]
    /// The line is not JSON.
    NotJson(String),
    #[error("missing key field `{0}`")]
    /// The line has no key field.
    MissingKey(String),
    #[error("key field `{0}` is not a string or a number")]
    /// The key is refused.
    BadKey(String),
    #[error("time field `{0}` is not an integer")]
    /// The time field is not an integer.
    BadTime(String),
}

/// Extracts the key field `key_field` and the optional time field.
pub fn decode<'a>(
    line: &'a [u8],
    key_field: &str,
    time_field: Option<&str>,
) -> Result<Decoded<'a>, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
    match scan(text, key_field, time_field) {
        Ok(found) => Ok(found),
        Err(Unsure) => decode_slow(text, key_field, time_field),
    }
}

/// The common case in one pass without serde: an object whose key field is
/// a string without escapes or a number, and whose time field (if any) is
/// an integer; anything else (and every error) is left to
/// [`decode_slow`], which decides.
#[inline]
fn scan<'a>(
    text: &'a str,
    key_field: &str,
    time_field: Option<&str>,
) -> Result<Decoded<'a>, Unsure> {
    let mut s = Scanner::new(text.as_bytes(), true);
    let (mut key, mut time) = (None, None);
    if s.open_object()? {
        loop {
            let name = s.key()?;
            let (kind, start, end) = s.value(1)?;
            // As in the slow path: the last occurrence counts, and a field
            // named like both is the key.
            if name == key_field.as_bytes() {
                key = match kind {
                    Kind::Str | Kind::Int | Kind::Number => Some(&text[start..end]),
                    Kind::EscapedStr | Kind::Other => return Err(Unsure),
                };
            } else if Some(name) == time_field.map(str::as_bytes) {
                let literal = &text[start..end];
                // serde_json reads `-0` as a float.
                if kind != Kind::Int || literal.starts_with("-0") {
                    return Err(Unsure);
                }
                time = Some(literal.parse::<i64>().map_err(|_| Unsure)?);
            }
            if !s.next_member()? {
                break;
            }
        }
    }
    s.end()?;
    Ok(Decoded {
        key: Cow::Borrowed(key.ok_or(Unsure)?),
        time,
    })
}

/// [`decode`] through serde_json: every case, with its error.
#[cold]
#[inline(never)]
fn decode_slow<'a>(
    text: &'a str,
    key_field: &str,
    time_field: Option<&str>,
) -> Result<Decoded<'a>, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Fields {
        line: text,
        key_field,
        time_field,
        error: None,
    };
    let found = match seed.deserialize(&mut de).and_then(|f| de.end().map(|()| f)) {
        Ok(f) => f,
        Err(e) => return Err(DecodeError::NotJson(e.to_string())),
    };
    if let Some(e) = found.error {
        return Err(e);
    }
    let key = match found.key {
        Some(Key::Text(k)) => k,
        Some(Key::NumberSlow) => Cow::Borrowed(number_literal_slow(text, key_field)?),
        None => return Err(DecodeError::MissingKey(key_field.to_string())),
    };
    Ok(Decoded {
        key,
        time: found.time,
    })
}

/// The number's literal text in `line`, found the slow way (a second
/// parse) when the key field's name had escapes.
#[cold]
fn number_literal_slow<'a>(line: &'a str, key_field: &str) -> Result<&'a str, DecodeError> {
    // Like the first pass, the last occurrence of the field counts.
    let fields: Vec<(Cow<'_, str>, &'a RawValue)> = serde_json::from_str::<RawFields<'a>>(line)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?
        .0;
    fields
        .into_iter()
        .rev()
        .find(|(name, _)| name == key_field)
        .map(|(_, v)| v.get())
        .ok_or_else(|| DecodeError::MissingKey(key_field.to_string()))
}

/// An object's fields in order, values as raw text.
struct RawFields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> de::Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(name) = map.next_key::<FieldName<'de>>()? {
                    v.push((name.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(RawFields(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The number that follows field name `name` (borrowed from `line`), if the
/// value there is one: `name`'s closing quote, `:` and whitespace skipped,
/// then the characters a number is made of (the parser checks its syntax
/// when it skips the value).
fn number_after<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = (name.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    let rest = line.get(start + name.len()..)?.strip_prefix('"')?;
    let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let rest = rest
        .trim_start_matches(ws)
        .strip_prefix(':')?
        .trim_start_matches(ws);
    if !rest.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    let end = rest
        .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

struct Fields<'f, 'de> {
    /// The whole line, where number keys are borrowed from.
    line: &'de str,
    key_field: &'f str,
    time_field: Option<&'f str>,
    /// A field-level problem found while scanning (reported after the scan
    /// so JSON syntax errors take precedence).
    error: Option<DecodeError>,
}

/// A key found by the scan.
enum Key<'a> {
    Text(Cow<'a, str>),
    /// A number after a field name with escapes: its text is found by a
    /// second parse.
    NumberSlow,
}

struct Found<'a> {
    key: Option<Key<'a>>,
    time: Option<i64>,
    error: Option<DecodeError>,
}

impl<'de> DeserializeSeed<'de> for Fields<'_, 'de> {
    type Value = Found<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_, 'de> {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Found<'de>, A::Error> {
        let mut found = Found {
            key: None,
            time: None,
            error: None,
        };
        while let Some(name) = map.next_key::<FieldName<'de>>()? {
            if name.0 == self.key_field {
                // A number's literal is taken from the line right after the
                // field name; the parser only checks its syntax (no
                // conversion, so no number is out of range).
                let literal = match &name.0 {
                    Cow::Borrowed(n) => number_after(self.line, n),
                    Cow::Owned(_) => None,
                };
                if let Some(literal) = literal {
                    map.next_value::<IgnoredAny>()?;
                    found.key = Some(Key::Text(Cow::Borrowed(literal)));
                    continue;
                }
                match map.next_value::<KeyValue<'de>>()? {
                    KeyValue::Str(k) => found.key = Some(Key::Text(k)),
                    // After a field name with escapes.
                    KeyValue::Number => found.key = Some(Key::NumberSlow),
                    KeyValue::Other => {
                        self.error = Some(DecodeError::BadKey(self.key_field.to_string()))
                    }
                }
            } else if Some(&*name.0) == self.time_field {
                match map.next_value::<TimeValue>()?.0 {
                    Some(t) => found.time = Some(t),
                    None => {
                        self.error = Some(DecodeError::BadTime(
                            self.time_field.unwrap_or_default().to_string(),
                        ))
                    }
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        found.error = self.error;
        Ok(found)
    }
}

/// A field name, borrowed when it has no escapes (also used by the native
/// baseline operator).
pub(crate) struct FieldName<'a>(pub(crate) Cow<'a, str>);

impl<'de> de::Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(FieldName)
    }
}

struct StrVisitor;
impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// The key's value: a string (borrowed when it has no escapes), a number
/// (whose literal text the caller takes from the line), or another type.
enum KeyValue<'a> {
    Str(Cow<'a, str>),
    Number,
    Other,
}

impl<'de> de::Deserialize<'de> for KeyValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyValue::Str(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(KeyValue::Number)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(KeyValue::Number)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(KeyValue::Number)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(KeyValue::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(KeyValue::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KeyValue::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyValue::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The time's value: an integer, `None` for anything else.
struct TimeValue(Option<i64>);

impl<'de> de::Deserialize<'de> for TimeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TimeValue(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TimeValue(i64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TimeValue(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(TimeValue(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TimeValue(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TimeValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TimeValue(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TimeValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_key_and_time_among_other_fields() {
        let d = decode(
            br#"{"a":[1,{"key":"no"}],"key":"k1","ts":17,"z":null}"#,
            "key",
            Some("ts"),
        )
        .unwrap();
        assert_eq!(
            d,
            Decoded {
                key: Cow::Borrowed("k1"),
                time: Some(17)
            }
        );
        let d = decode(br#"{"card":42}"#, "card", None).unwrap();
        assert_eq!(d.key, "42");
        let d = decode(br#"{"key":"a\"b"}"#, "key", None).unwrap();
        assert_eq!(d.key, "a\"b");
    }

    #[test]
    fn names_what_is_wrong() {
        let e = |l: &[u8]| decode(l, "key", Some("ts")).unwrap_err().to_string();
        assert_eq!(e(br#"{"id":1}"#), "missing key field `key`");
        assert_eq!(
            e(br#"{"key":true}"#),
            "key field `key` is not a string or a number"
        );
        assert_eq!(
            e(br#"{"key":"k","ts":"noon"}"#),
            "time field `ts` is not an integer"
        );
        assert!(e(br#"{"key":"k""#).starts_with("line is not a JSON object"));
        assert!(e(b"[1,2]").starts_with("line is not a JSON object"));
        assert!(e(br#"{"key":"k"} trailing"#).starts_with("line is not a JSON object"));
        assert_eq!(
            e(b"{\"key\":\"\xff\"}"),
            "line is not UTF-8 (invalid byte at offset 8)"
        );
    }

    fn key(line: &str) -> Cow<'_, str> {
        decode(line.as_bytes(), "key", None).unwrap().key
    }

    #[test]
    fn number_keys_are_their_literal_text() {
        // Big integers beyond u64 and f64 precision stay apart.
        assert_eq!(
            key(r#"{"key":12345678901234567890123}"#),
            "12345678901234567890123"
        );
        assert_eq!(
            key(r#"{"key":12345678901234567890124}"#),
            "12345678901234567890124"
        );
        assert_eq!(
            key(r#"{"key":18446744073709551616}"#),
            "18446744073709551616"
        );
        // Beyond any float's range: still a key, not an error.
        let long = "9".repeat(400);
        assert_eq!(key(&format!(r#"{{"key":{long}}}"#)), long);
        assert_eq!(key(r#"{"key":1e400}"#), "1e400");
        // Exponents, signs and decimals as written.
        assert_eq!(key(r#"{"key":1E2}"#), "1E2");
        assert_eq!(key(r#"{"key":1e-7}"#), "1e-7");
        assert_eq!(key(r#"{"key":-42}"#), "-42");
        assert_eq!(key(r#"{"key":-0}"#), "-0");
        assert_eq!(key(r#"{"key":0.10}"#), "0.10");
        assert_eq!(key(r#"{"key":1.0}"#), "1.0");
        assert_ne!(key(r#"{"key":1.0}"#), key(r#"{"key":1}"#));
        // A number and the string of the same text are one key.
        assert_eq!(key(r#"{"key":1}"#), key(r#"{"key":"1"}"#));
        // Whitespace around the value is not part of the key; the key is
        // borrowed from the line.
        let k = key("{ \"key\" :  7 , \"z\":1}");
        assert_eq!(k, "7");
        assert!(matches!(k, Cow::Borrowed(_)));
        assert!(matches!(key(r#"{"key":"plain"}"#), Cow::Borrowed("plain")));
        assert!(matches!(key(r#"{"key":12}"#), Cow::Borrowed("12")));
        // A field name with escapes, and repeated fields (the last counts).
        assert_eq!(key(r#"{"k\u0065y" : 1E+3}"#), "1E+3");
        assert_eq!(key(r#"{"key":1,"key":2}"#), "2");
        assert_eq!(key(r#"{"k\u0065y":1,"key":2}"#), "2");
        assert_eq!(key(r#"{"key":1,"k\u0065y":2,"x":{"key":3}}"#), "2");
        // Escapes are resolved.
        assert_eq!(key(r#"{"key":"a\u00e9\\b"}"#), "a\u{e9}\\b");
        assert_eq!(key(r#"{"key":"\"1\""}"#), "\"1\"");
    }

    #[test]
    fn bad_numbers_and_other_types_are_rejected() {
        let e = |l: &str| decode(l.as_bytes(), "key", None).unwrap_err().to_string();
        for bad in ["01", "1.", "-", "+1", "1e", ".5", "NaN", "0x10"] {
            let err = e(&format!(r#"{{"key":{bad}}}"#));
            assert!(err.starts_with("line is not a JSON object"), "{bad}: {err}");
        }
        for other in ["null", "false", "[1]", r#"{"a":1}"#] {
            assert_eq!(
                e(&format!(r#"{{"key":{other}}}"#)),
                "key field `key` is not a string or a number",
                "{other}"
            );
        }
        assert!(e(r#"{"key":"bad \x escape"}"#).starts_with("line is not a JSON object"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, ..Default::default() })]

        /// The one-pass scan and serde_json agree on every line: the same
        /// key and time, or the same error.
        #[test]
        fn the_scan_gives_what_serde_json_gives(line in crate::json::tests::line()) {
            let fast = decode(&line, "key", Some("ts"));
            let slow = std::str::from_utf8(&line)
                .map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))
                .and_then(|text| decode_slow(text, "key", Some("ts")));
            proptest::prop_assert_eq!(fast, slow, "line {:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn usual_lines_take_the_scan() {
        let line = r#"{"key":"user-7","amount":12,"ts":1700000000000}"#;
        let found = scan(line, "key", Some("ts")).expect("the scan reads it");
        assert_eq!((&*found.key, found.time), ("user-7", Some(1700000000000)));
        let found = scan(r#" { "ts": -5, "key" : 1E2 } "#, "key", Some("ts")).expect("scan");
        assert_eq!((&*found.key, found.time), ("1E2", Some(-5)));
    }
}
