//! `cargo fuzz run sftp_reply`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_engine::fuzz_sftp_reply(data);
});
