//! `cargo fuzz run sqlite_pages`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_format::fuzz::sqlite_pages(data);
});
