//! The pipeline-file parser never panics, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = eddy_runtime::Pipeline::from_toml(
        text,
        std::path::Path::new("pipeline.toml"),
        Default::default(),
    );
});
