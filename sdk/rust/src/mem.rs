//! `memcmp` for the operator's component, eight bytes at a time.
//!
//! Rust compiles `==` and `cmp` on strings and byte slices of unknown
//! length (the field names serde's derive matches, `HashMap` keys, state
//! names) to a call to `memcmp`. In `wasm32-wasip2` that symbol comes from
//! wasi-libc, whose `memcmp` compares one byte per loop turn; this one,
//! linked ahead of it, compares eight. Same contract: the sign of the
//! difference of the first differing bytes, as unsigned.

/// Compares `a` and `b` (of equal length) as `memcmp` does.
#[cfg(any(test, target_arch = "wasm32"))]
#[inline]
fn compare(a: &[u8], b: &[u8]) -> i32 {
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        let (x, y) = (u64::from_le_bytes(*x), u64::from_le_bytes(*y));
        if x != y {
            // Little endian: the lowest differing byte comes first.
            let shift = (x ^ y).trailing_zeros() / 8 * 8;
            return i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8);
        }
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return i32::from(*x) - i32::from(*y);
        }
    }
    0
}

/// Compares `n` bytes at `a` and `b`.
///
/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes (the C contract).
#[cfg(all(target_arch = "wasm32", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(
    a: *const core::ffi::c_void,
    b: *const core::ffi::c_void,
    n: usize,
) -> i32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: the caller's contract: both are readable for `n` bytes.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a.cast::<u8>(), n),
            core::slice::from_raw_parts(b.cast::<u8>(), n),
        )
    };
    compare(a, b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn compares_as_memcmp(a in prop::collection::vec(0u8..4, 0..40), b in prop::collection::vec(0u8..4, 0..40)) {
            let n = a.len().min(b.len());
            let (a, b) = (&a[..n], &b[..n]);
            let got = super::compare(a, b);
            prop_assert_eq!(got.signum(), a.cmp(b) as i32, "{:?} {:?}", a, b);
            if let Some(i) = (0..n).find(|&i| a[i] != b[i]) {
                prop_assert_eq!(got, i32::from(a[i]) - i32::from(b[i]));
            }
        }
    }
}
