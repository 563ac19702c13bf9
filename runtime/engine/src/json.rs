//! A strict JSON scanner for the data path: checks the syntax of a value
//! and finds top-level fields without serde, in one pass and with no
//! allocation.
//!
//! It never decides alone that input is bad: whatever it does not handle
//! (an escape in an object key, a control character, nesting deeper than
//! [`MAX_DEPTH`]) and every syntax error comes back as [`Unsure`], and the
//! caller then runs its serde_json path on the same bytes, which gives the
//! verdict and the error text. Where it succeeds, serde_json accepts the
//! same bytes: it checks the grammar serde_json checks when it skips a
//! value (numbers by their syntax only, string escapes by their form), and
//! object keys as serde_json reads them (no escapes, UTF-8). The tests
//! here and in `source::decode` compare both paths on generated and mutated
//! lines.
//!
//! Used by [`crate::source::decode`] to find a line's key and event time:
//! the serde visitor it replaces cost about a fifth more instructions per
//! line (callgrind, W1 lines).

/// The scanner cannot vouch for the input; the serde_json path decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsure;

/// Nesting deeper than this is left to serde_json (its limit is 128).
pub(crate) const MAX_DEPTH: u32 = 100;

/// A value found by [`Scanner::value`]: its kind and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A string without escapes; the range is its contents.
    Str,
    /// A string with escapes (checked in form, not decoded).
    EscapedStr,
    /// An integer literal (`-?digits`).
    Int,
    /// Another number (with a fraction or an exponent).
    Number,
    /// `true`, `false`, `null`, an object or an array.
    Other,
}

/// A cursor over one JSON text.
pub(crate) struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Object keys may hold non-ASCII bytes only if the caller checked the
    /// whole text is UTF-8 (serde_json checks keys).
    utf8_checked: bool,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `bytes`; `utf8_checked` says the caller
    /// already knows `bytes` is UTF-8.
    pub(crate) fn new(bytes: &'a [u8], utf8_checked: bool) -> Self {
        Scanner {
            bytes,
            pos: 0,
            utf8_checked,
        }
    }

    /// Skips whitespace; the next byte, if any.
    #[inline]
    pub(crate) fn skip_ws(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<(), Unsure> {
        match self.skip_ws() {
            None => Ok(()),
            Some(_) => Err(Unsure),
        }
    }

    /// Consumes `b` (after whitespace).
    #[inline]
    pub(crate) fn eat(&mut self, b: u8) -> Result<(), Unsure> {
        if self.skip_ws() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// Reads the object key at the cursor (after whitespace) and the `:`
    /// after it: its bytes. Keys with escapes are left to serde_json.
    #[inline]
    pub(crate) fn key(&mut self) -> Result<&'a [u8], Unsure> {
        if self.skip_ws() != Some(b'"') {
            return Err(Unsure);
        }
        let (start, end, escaped) = self.string()?;
        let key = &self.bytes[start..end];
        if escaped || (!self.utf8_checked && !key.is_ascii()) {
            return Err(Unsure);
        }
        self.eat(b':')?;
        Ok(key)
    }

    /// After an object's member: `Some(true)` if another follows (its `,`
    /// consumed), `Some(false)` at the closing `}` (consumed).
    #[inline]
    pub(crate) fn next_member(&mut self) -> Result<bool, Unsure> {
        match self.skip_ws() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(Unsure),
        }
    }

    /// Opens the object at the cursor: `true` if it has members (the
    /// cursor is then at the first key), `false` if it is `{}`.
    #[inline]
    pub(crate) fn open_object(&mut self) -> Result<bool, Unsure> {
        self.eat(b'{')?;
        if self.skip_ws() == Some(b'}') {
            self.pos += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Scans the value at the cursor (after whitespace): its kind and the
    /// range of its text (a string's contents, without the quotes).
    #[inline]
    pub(crate) fn value(&mut self, depth: u32) -> Result<(Kind, usize, usize), Unsure> {
        let b = self.skip_ws().ok_or(Unsure)?;
        let start = self.pos;
        match b {
            b'"' => {
                let (s, e, escaped) = self.string()?;
                let kind = if escaped { Kind::EscapedStr } else { Kind::Str };
                Ok((kind, s, e))
            }
            b'-' | b'0'..=b'9' => {
                let int = self.number()?;
                Ok((if int { Kind::Int } else { Kind::Number }, start, self.pos))
            }
            b'{' | b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Unsure);
                }
                self.container(depth + 1)?;
                Ok((Kind::Other, start, self.pos))
            }
            b't' => self.literal(b"true", start),
            b'f' => self.literal(b"false", start),
            b'n' => self.literal(b"null", start),
            _ => Err(Unsure),
        }
    }

    fn literal(&mut self, word: &[u8], start: usize) -> Result<(Kind, usize, usize), Unsure> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok((Kind::Other, start, self.pos))
        } else {
            Err(Unsure)
        }
    }

    /// An object or array at the cursor, at nesting `depth`.
    fn container(&mut self, depth: u32) -> Result<(), Unsure> {
        if self.bytes[self.pos] == b'{' {
            if !self.open_object()? {
                return Ok(());
            }
            loop {
                self.key()?;
                self.value(depth)?;
                if !self.next_member()? {
                    return Ok(());
                }
            }
        }
        self.pos += 1;
        if self.skip_ws() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            match self.skip_ws() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// The string at the cursor (its `"`): the range of its contents and
    /// whether it has escapes (checked in form: `\u` takes four hex
    /// digits). A control character is left to serde_json.
    #[inline]
    fn string(&mut self) -> Result<(usize, usize, bool), Unsure> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            let b = *self.bytes.get(i).ok_or(Unsure)?;
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.bytes.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = self.bytes.get(i + 2..i + 6).ok_or(Unsure)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Unsure);
                            }
                            i += 6;
                        }
                        _ => return Err(Unsure),
                    }
                }
                0..=0x1f => return Err(Unsure),
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        Ok((start, i, escaped))
    }

    /// The number at the cursor, in JSON's grammar; whether it is an
    /// integer literal.
    #[inline]
    fn number(&mut self) -> Result<bool, Unsure> {
        let (end, int) = eddy_codec::json_number(self.bytes, self.pos).ok_or(Unsure)?;
        self.pos = end;
        Ok(int)
    }
}

/// Whether `bytes` is exactly one JSON value (with whitespace around), as
/// far as the scanner can tell; `Err` when serde_json must decide. (For the
/// tests: checking an emitted value this way measured slower than
/// serde_json's own skipping, so the sink keeps serde_json.)
#[cfg(test)]
pub(crate) fn check(bytes: &[u8]) -> Result<(), Unsure> {
    let mut s = Scanner::new(bytes, false);
    s.value(0)?;
    s.end()
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Lines like real input, and edits of them that break them in the
    /// ways real input breaks.
    pub(crate) fn line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("key".to_string()),
            Just("ts".to_string()),
            Just("amount".to_string()),
            "[a-z\\\\\"é]{0,4}",
        ];
        let value = prop_oneof![
            "\"[a-z0-9 é\\\\\"/\u{1}-]{0,8}\"",
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            Just("-0".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
            Just("[1,{\"a\":[]},\"x\"]".to_string()),
            Just("{\"key\":1}".to_string()),
            Just("\"\\u00e9\\n\"".to_string()),
        ];
        let line = prop::collection::vec((name, value), 0..5).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(n, v)| format!("\"{n}\": {v}"))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        });
        let edit = (
            any::<prop::sample::Index>(),
            0u8..4,
            prop::sample::select(b"{}[]\",:0-.e \\\x01\xff".to_vec()),
        );
        (line, prop::collection::vec(edit, 0..3)).prop_map(|(mut line, edits)| {
            for (at, what, byte) in edits {
                let i = if line.is_empty() {
                    0
                } else {
                    at.index(line.len())
                };
                match what {
                    0 if !line.is_empty() => line[i] = byte,
                    1 if !line.is_empty() => {
                        line.remove(i);
                    }
                    2 => line.insert(i, byte),
                    _ => line.truncate(i),
                }
            }
            line
        })
    }

    /// serde_json's verdict on `bytes` as one value.
    fn serde_accepts(bytes: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        /// What the scanner accepts, serde_json accepts (the scanner may
        /// leave valid input to serde_json, never the reverse).
        #[test]
        fn what_the_scan_accepts_serde_json_accepts(bytes in line()) {
            if check(&bytes).is_ok() {
                prop_assert!(serde_accepts(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn any_bytes(bytes in prop::collection::vec(prop::sample::select(b"{}[]\":,.-+eE0123456789 \\/untrlsfa\x01\x80".to_vec()), 0..24)) {
            if check(&bytes).is_ok() {
                prop_assert!(serde_accepts(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn usual_values_are_checked_here() {
        for ok in [
            &br#"{"count":3,"sum":12.5}"#[..],
            b" [1, -0.5e-3, \"a\\u00e9\\n\", true, null, {}] ",
            b"\"caf\xc3\xa9\"",
            b"0",
        ] {
            assert_eq!(check(ok), Ok(()), "{:?}", String::from_utf8_lossy(ok));
            assert!(serde_accepts(ok));
        }
        for unsure in [
            &b"01"[..],
            b"{\"a\":1,}",
            b"[1,]",
            b"\"\\x\"",
            b"\"\x01\"",
            b"{\"\\u0041\":1}",
            b"{\"\xc3\xa9\":1}",
            b"1 2",
            b"",
        ] {
            assert_eq!(
                check(unsure),
                Err(Unsure),
                "{:?}",
                String::from_utf8_lossy(unsure)
            );
        }
    }
}
