//! The control plane's request parser never panics, whatever the body a
//! client sends to `POST /swap` or `POST /rollback` (or a request line it
//! does not know), and what it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the request; the rest is its body.
    let Some((&pick, body)) = input.split_first() else {
        return;
    };
    let (method, path) = match pick % 4 {
        0 => ("POST", "/swap"),
        1 => ("POST", "/rollback"),
        2 => ("GET", "/status"),
        _ => ("PUT", "/swap"),
    };
    if let Ok(envelope) = eddy_runtime::control::parse_request(method, path, body) {
        let (m, p, b) = envelope.http();
        assert_eq!(
            eddy_runtime::control::parse_request(m, p, &b).as_ref(),
            Ok(&envelope)
        );
    }
});
