//! The `rest` fuzz target's entry points on mutations of valid inputs (part of `cargo
//! test`; the real fuzzing is `cargo fuzz run rest`, fuzz/README.md).

fn mutations(seed: &[u8], rounds: u64, f: impl Fn(&[u8])) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    f(seed);
    for _ in 0..rounds {
        let mut d = seed.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % d.len().max(1);
            match next() % 4 {
                0 if !d.is_empty() => d[i] = next() as u8,
                1 if !d.is_empty() => {
                    d.remove(i);
                }
                2 => d.insert(i.min(d.len()), next() as u8),
                _ => d.truncate(i),
            }
        }
        f(&d);
    }
}

#[test]
fn request_decoders_survive_mutations() {
    let name = "ab".repeat(32);
    let seed = format!(
        "/site/k3s/data/{name}\0bytes=10-99\0Basic bm9kZS0xOnB3\0node-1:$2y$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzabcde:append-only:k3s\n"
    );
    mutations(seed.as_bytes(), 5000, cairn_serve::fuzz_request);
}

#[test]
fn listing_decoder_survives_mutations() {
    let seed = format!(
        r#"[{{"name":"{}","size":123}},{{"name":"../x","size":1}}]"#,
        "cd".repeat(32)
    );
    mutations(seed.as_bytes(), 5000, cairn_engine::fuzz_rest_answer);
}
