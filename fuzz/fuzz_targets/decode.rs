//! The JSON Lines decoder never panics, and what it accepts has the key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(d) = eddy_runtime::decode(line, "key", Some("ts")) {
        // An accepted line is valid UTF-8 JSON.
        assert!(std::str::from_utf8(line).is_ok());
        // The key is text of the line (a number's literal, a string without
        // escapes), unless the line has escapes.
        let k = d.key.as_bytes();
        assert!(
            k.is_empty() || line.windows(k.len()).any(|w| w == k) || line.contains(&b'\\'),
            "key {:?} is not in the line",
            d.key
        );
    }
});
