//! The fast JSON reader: a serde `Deserializer` over a byte slice for the
//! common shapes of event payloads and state values (objects, arrays,
//! strings without escapes, integers, decimals that convert exactly).
//!
//! It never decides an outcome on its own: whatever it does not handle, and
//! every error, comes back as [`Fallback`], and the caller then runs
//! serde_json on the same bytes, so the value or the error text the
//! operator gets is serde_json's. Where it succeeds, it makes exactly the
//! visitor calls serde_json makes for the same input (the tests compare
//! both on generated and mutated documents), so the result is the same.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::Fallback;

/// Nesting deeper than this falls back (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 100;

/// Exact powers of ten as `f64` (10^22 is the largest that is exact).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Significands up to 2^53 are exact in an `f64`.
const MAX_EXACT: u64 = 1 << 53;

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether a byte of `x` is zero.
#[inline]
fn has_zero(x: u64) -> bool {
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Reads one JSON document from `input`.
pub(crate) struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
    depth: u32,
    /// An `f32` is being read: serde_json rounds its decimals to `f32`
    /// directly, so they fall back.
    single: bool,
}

impl<'de> Deserializer<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Deserializer {
            input,
            pos: 0,
            depth: 0,
            single: false,
        }
    }

    /// After the document: only whitespace may follow.
    pub(crate) fn end(&mut self) -> Result<(), Fallback> {
        match self.skip_ws() {
            None => Ok(()),
            Some(_) => Err(Fallback),
        }
    }

    /// Skips whitespace; the next byte, if any.
    #[inline]
    fn skip_ws(&mut self) -> Option<u8> {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Skips whitespace; the next byte, which must be there.
    #[inline]
    fn peek(&mut self) -> Result<u8, Fallback> {
        self.skip_ws().ok_or(Fallback)
    }

    /// Consumes the literal `word` (`null`, `true`, `false`).
    #[inline]
    fn literal(&mut self, word: &[u8]) -> Result<(), Fallback> {
        match self.input.get(self.pos..self.pos + word.len()) {
            Some(w) if w == word => {
                self.pos += word.len();
                Ok(())
            }
            _ => Err(Fallback),
        }
    }

    /// Reads the string that starts at the current `"`; strings with an
    /// escape or a control character fall back.
    #[inline]
    fn string(&mut self) -> Result<&'de str, Fallback> {
        let start = self.pos + 1;
        let rest = self.input.get(start..).ok_or(Fallback)?;
        let mut i = 0;
        let mut high = 0u64;
        // Eight bytes at a time while none of them ends or escapes.
        while let Some(chunk) = rest.get(i..i + 8) {
            let x = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
            if has_zero(x ^ (ONES * u64::from(b'"')))
                || has_zero(x ^ (ONES * u64::from(b'\\')))
                || x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0
            {
                break;
            }
            high |= x & HIGHS;
            i += 8;
        }
        loop {
            let b = *rest.get(i).ok_or(Fallback)?;
            match b {
                b'"' => break,
                b'\\' | 0..=0x1f => return Err(Fallback),
                _ => {
                    high |= u64::from(b & 0x80);
                    i += 1;
                }
            }
        }
        let bytes = &rest[..i];
        let s = if high == 0 {
            // SAFETY: every byte is ASCII.
            unsafe { std::str::from_utf8_unchecked(bytes) }
        } else {
            std::str::from_utf8(bytes).map_err(|_| Fallback)?
        };
        self.pos = start + i + 1;
        Ok(s)
    }

    /// Reads a number and visits it as serde_json would: `u64` for a
    /// non-negative integer, `i64` for a negative one, `f64` for one with a
    /// fraction or an exponent. Integers that overflow, `-0`, and decimals
    /// that do not convert exactly with one operation fall back.
    #[inline]
    fn number<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Fallback> {
        let input = self.input;
        let mut i = self.pos;
        let negative = input.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut m: u64 = 0;
        match input.get(i) {
            Some(b'0') => {
                i += 1;
                // A leading zero is an error in JSON.
                if matches!(input.get(i), Some(b'0'..=b'9')) {
                    return Err(Fallback);
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = input.get(i) {
                    m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    i += 1;
                }
            }
            _ => return Err(Fallback),
        }
        let mut float = false;
        let mut exponent: i32 = 0;
        if input.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            let start = i;
            while let Some(&d @ b'0'..=b'9') = input.get(i) {
                m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                i += 1;
            }
            if i == start || i - start > 22 {
                return Err(Fallback);
            }
            exponent = -((i - start) as i32);
        }
        // Up to 19 digits cannot wrap a u64 (checked arithmetic would cost
        // a 128-bit multiplication per digit in wasm32); more fall back.
        let digits = i - self.pos - usize::from(negative) - usize::from(float);
        if digits > 19 {
            return Err(Fallback);
        }
        if matches!(input.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            let minus = match input.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            let mut e: i32 = 0;
            while let Some(&d @ b'0'..=b'9') = input.get(i) {
                if e > 1000 {
                    return Err(Fallback);
                }
                e = e * 10 + i32::from(d - b'0');
                i += 1;
            }
            if i == start {
                return Err(Fallback);
            }
            exponent += if minus { -e } else { e };
        }
        self.pos = i;
        if !float {
            if !negative {
                return visitor.visit_u64(m);
            }
            // serde_json reads `-0` as the float -0.0.
            if m == 0 || m > i64::MAX as u64 {
                return Err(Fallback);
            }
            return visitor.visit_i64(-(m as i64));
        }
        // One correctly rounded operation on exact operands: the correctly
        // rounded value, which is what serde_json returns too.
        if self.single || m > MAX_EXACT || exponent.unsigned_abs() as usize >= POW10.len() {
            return Err(Fallback);
        }
        let pow = POW10[exponent.unsigned_abs() as usize];
        let mut f = m as f64;
        if exponent >= 0 {
            f *= pow;
        } else {
            f /= pow;
        }
        visitor.visit_f64(if negative { -f } else { f })
    }

    /// Skips a number, checking its syntax as JSON defines it.
    #[inline]
    fn skip_number(&mut self) -> Result<(), Fallback> {
        let (end, _) = eddy_codec::json_number(self.input, self.pos).ok_or(Fallback)?;
        self.pos = end;
        Ok(())
    }

    #[inline]
    fn enter(&mut self) -> Result<(), Fallback> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Fallback);
        }
        self.pos += 1;
        Ok(())
    }

    /// After a container's visitor: skips whitespace and consumes `close`.
    #[inline]
    fn leave(&mut self, close: u8) -> Result<(), Fallback> {
        self.depth -= 1;
        if self.peek()? != close {
            return Err(Fallback);
        }
        self.pos += 1;
        Ok(())
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Fallback;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        match self.peek()? {
            b'"' => {
                let s = self.string()?;
                visitor.visit_borrowed_str(s)
            }
            b'-' | b'0'..=b'9' => self.number(visitor),
            b'{' => {
                self.enter()?;
                let value = visitor.visit_map(Entries {
                    de: &mut *self,
                    first: true,
                })?;
                self.leave(b'}')?;
                Ok(value)
            }
            b'[' => {
                self.enter()?;
                let value = visitor.visit_seq(Elements {
                    de: &mut *self,
                    first: true,
                })?;
                self.leave(b']')?;
                Ok(value)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            _ => Err(Fallback),
        }
    }

    // A visitor of another type than the value's returns an error, and
    // serde_json then gives its own (the same outcome as its typed
    // methods, which refuse a value of another type).
    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f64 deserialize_seq deserialize_map
    }

    /// A value nobody reads (a field the type does not have): strings and
    /// numbers are skipped by their syntax, without decoding.
    #[inline]
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        match self.peek()? {
            b'"' => {
                self.string()?;
                visitor.visit_unit()
            }
            b'-' | b'0'..=b'9' => {
                self.skip_number()?;
                visitor.visit_unit()
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        self.single = true;
        let value = self.deserialize_any(visitor);
        self.single = false;
        value
    }

    /// Strings (and so identifiers: field names) must be JSON strings;
    /// serde_json refuses a number where a string is expected.
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        if self.peek()? != b'"' {
            return Err(Fallback);
        }
        let s = self.string()?;
        visitor.visit_borrowed_str(s)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        self.deserialize_str(visitor)
    }

    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        self.deserialize_str(visitor)
    }

    #[inline]
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        self.deserialize_str(visitor)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Fallback> {
        if self.peek()? != b'n' {
            return Err(Fallback);
        }
        self.literal(b"null")?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        // serde_json's `RawValue` and arbitrary-precision numbers are
        // read by serde_json itself.
        if name.starts_with("$serde_json::private::") {
            return Err(Fallback);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        self.deserialize_seq(visitor)
    }

    /// Structs read from an object or (as serde_json allows) an array.
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        if name.starts_with("$serde_json::private::") {
            return Err(Fallback);
        }
        self.deserialize_any(visitor)
    }

    /// A unit variant as a string; other enum shapes go to serde_json.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Fallback> {
        if self.peek()? != b'"' {
            return Err(Fallback);
        }
        let s = self.string()?;
        visitor.visit_enum(de::value::BorrowedStrDeserializer::<Fallback>::new(s))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Fallback> {
        Err(Fallback)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Fallback> {
        Err(Fallback)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Fallback> {
        Err(Fallback)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Fallback> {
        Err(Fallback)
    }
}

/// The entries of an object.
struct Entries<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Fallback;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Fallback> {
        let mut b = self.de.peek()?;
        if b == b'}' {
            return Ok(None);
        }
        if !std::mem::take(&mut self.first) {
            if b != b',' {
                return Err(Fallback);
            }
            self.de.pos += 1;
            b = self.de.peek()?;
        }
        if b != b'"' {
            return Err(Fallback);
        }
        let key = seed.deserialize(&mut *self.de)?;
        if self.de.peek()? != b':' {
            return Err(Fallback);
        }
        self.de.pos += 1;
        Ok(Some(key))
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Fallback> {
        seed.deserialize(&mut *self.de)
    }
}

/// The elements of an array.
struct Elements<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Fallback;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Fallback> {
        let b = self.de.peek()?;
        if b == b']' {
            return Ok(None);
        }
        if !std::mem::take(&mut self.first) {
            if b != b',' {
                return Err(Fallback);
            }
            self.de.pos += 1;
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}
