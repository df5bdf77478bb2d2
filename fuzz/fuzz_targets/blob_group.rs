//! `cargo fuzz run blob_group`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_format::fuzz::blob_group(data);
});
