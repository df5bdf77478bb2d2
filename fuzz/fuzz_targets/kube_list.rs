//! `cargo fuzz run kube_list`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_engine::k3s::fuzz::list_page(data);
});
