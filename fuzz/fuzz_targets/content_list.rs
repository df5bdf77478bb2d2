//! `cargo fuzz run content_list`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_format::fuzz::content_list(data);
});
