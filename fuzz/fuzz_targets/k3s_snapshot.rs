//! `cargo fuzz run k3s_snapshot`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_engine::k3s::fuzz::snapshot(data);
});
