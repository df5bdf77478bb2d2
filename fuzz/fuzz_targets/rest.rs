//! `cargo fuzz run rest`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_serve::fuzz_request(data);
    cairn_engine::fuzz_rest_answer(data);
});
