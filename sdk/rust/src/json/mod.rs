//! The SDK's JSON: what [`Event::json`](crate::Event::json), [`emit`](crate::emit)
//! and the state handles use to decode and encode values.
//!
//! Results are serde_json's, byte for byte and error for error: a fast
//! reader and writer handle the common shapes, and anything they do not
//! (escaped strings, decimals that need more than one exact operation,
//! `RawValue`, map keys that are not strings) or any error goes to
//! serde_json on the same bytes or value. The fast paths exist because in
//! WebAssembly serde_json's general code (position tracking, UTF-8 checks
//! of ASCII text, float printing with 128-bit arithmetic that wasm32 lacks)
//! is most of an operator's time; see `docs/performance.md`.

mod de;
mod ser;

use serde::de::Deserialize;
use serde::Serialize;

/// The fast path gave up; serde_json decides.
#[derive(Debug)]
pub(crate) struct Fallback;

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not handled by the fast JSON path")
    }
}

impl std::error::Error for Fallback {}

impl serde::de::Error for Fallback {
    #[inline]
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Fallback
    }
}

impl serde::ser::Error for Fallback {
    #[inline]
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Fallback
    }
}

/// Decodes `bytes` as serde_json's `from_slice` does.
#[inline]
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    let mut de = de::Deserializer::new(bytes);
    match T::deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(Fallback) => slow_from_slice(bytes),
    }
}

#[cold]
#[inline(never)]
fn slow_from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Appends `value` to `out` as serde_json's `to_writer` does (compact). On
/// an error, `out` is as it was.
#[inline]
pub fn to_writer<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    match value.serialize(&mut ser::Serializer { out: &mut *out }) {
        Ok(()) => Ok(()),
        Err(Fallback) => {
            out.truncate(start);
            slow_to_writer(out, value)
        }
    }
}

#[cold]
#[inline(never)]
fn slow_to_writer<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let start = out.len();
    let result = serde_json::to_writer(&mut *out, value);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Encodes `value` as serde_json's `to_vec` does.
#[inline]
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(64);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Appends `bytes` to `out` (short slices without `memory.copy`).
pub(crate) use eddy_codec::extend;

#[cfg(test)]
mod tests;
