//! Appending short byte strings without `memcpy`.
//!
//! In WebAssembly a copy of unknown length is a `memory.copy` instruction,
//! which wasmtime runs as a call out of the compiled code into the host;
//! for the handful of bytes of a key, a state name, a number or a small
//! JSON value, that call costs more than the copy. [`extend`] copies up to
//! 32 bytes with fixed-size moves instead (longer slices, and every slice
//! on other targets, go through `extend_from_slice`).

/// Appends `bytes` to `out`, as `out.extend_from_slice(bytes)` does.
#[inline(always)]
pub fn extend(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() > 32 || !cfg!(target_arch = "wasm32") {
        out.extend_from_slice(bytes);
    } else {
        short(out, bytes);
    }
}

/// [`extend`] for at most 32 bytes, with fixed-size moves.
#[inline(always)]
fn short(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    debug_assert!(n <= 32);
    out.reserve(n);
    let len = out.len();
    // SAFETY: `reserve` made room for `n` more bytes after `len`; every
    // move below reads inside `bytes` and writes inside that room (the two
    // moves of a size class overlap when `n` is not twice the size), and
    // after them the `n` bytes are initialised.
    unsafe {
        let src = bytes.as_ptr();
        let dst = out.as_mut_ptr().add(len);
        if n >= 16 {
            copy::<16>(src, dst);
            copy::<16>(src.add(n - 16), dst.add(n - 16));
        } else if n >= 8 {
            copy::<8>(src, dst);
            copy::<8>(src.add(n - 8), dst.add(n - 8));
        } else if n >= 4 {
            copy::<4>(src, dst);
            copy::<4>(src.add(n - 4), dst.add(n - 4));
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(len + n);
    }
}

/// Moves `N` bytes from `src` to `dst` (unaligned).
///
/// # Safety
///
/// Both must be valid for `N` bytes.
#[inline(always)]
unsafe fn copy<const N: usize>(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe {
        dst.cast::<[u8; N]>()
            .write_unaligned(src.cast::<[u8; N]>().read_unaligned())
    }
}

/// Where the JSON number starting at `start` in `bytes` ends, checked
/// against JSON's grammar (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`,
/// and no digit right after a leading zero, which serde_json refuses), and
/// whether it is an integer literal; `None` when it is not a number. Shared
/// by the host's line scanner and the SDK's JSON reader.
#[inline]
pub fn json_number(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    let digits = |mut i: usize| {
        while matches!(bytes.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        i
    };
    let mut i = start + usize::from(bytes.get(start) == Some(&b'-'));
    match bytes.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    let mut int = true;
    if bytes.get(i) == Some(&b'.') {
        int = false;
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        int = false;
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    if matches!(bytes.get(i), Some(b'0'..=b'9')) {
        return None;
    }
    Some((i, int))
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_numbers_end_where_the_grammar_says() {
        use super::json_number;
        for (text, want) in [
            ("0", Some((1, true))),
            ("-12,", Some((3, true))),
            ("1.50}", Some((4, false))),
            ("2e-3 ", Some((4, false))),
            ("-0.0E+1", Some((7, false))),
            ("01", None),
            ("1.", None),
            ("1e", None),
            ("-", None),
            ("+1", None),
            (".5", None),
        ] {
            assert_eq!(json_number(text.as_bytes(), 0), want, "{text}");
        }
        assert_eq!(json_number(b"[12]", 1), Some((3, true)));
    }

    #[test]
    fn appends_every_length_as_extend_from_slice() {
        let data: Vec<u8> = (0..80u8).collect();
        for prefix in [0, 3, 17] {
            for n in 0..=70 {
                let mut out = vec![9u8; prefix];
                if n <= 32 {
                    super::short(&mut out, &data[..n]);
                } else {
                    super::extend(&mut out, &data[..n]);
                }
                let mut want = vec![9u8; prefix];
                want.extend_from_slice(&data[..n]);
                assert_eq!(out, want, "prefix {prefix}, {n} bytes");
            }
        }
    }
}
