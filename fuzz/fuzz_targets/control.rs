//! The control-socket request parser never panics, whatever the bytes a
//! client sends, and what it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(envelope) = eddy_runtime::control::parse_request(line) {
        let again = serde_json::to_vec(&envelope).expect("an accepted request serializes");
        assert_eq!(
            eddy_runtime::control::parse_request(&again).as_ref(),
            Ok(&envelope)
        );
    }
});
