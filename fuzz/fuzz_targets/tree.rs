//! `cargo fuzz run tree`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_format::fuzz::tree(data);
});
