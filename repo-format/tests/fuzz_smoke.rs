//! Runs every `cairn_format::fuzz` entry point over thousands of inputs so that a plain
//! `cargo test` exercises the decoders against panics (the real fuzzing is `fuzz/`, see
//! `fuzz/README.md`):
//!
//! - random bytes, some behind a valid preamble;
//! - mutations (bit flips, byte edits, insertions, deletions, truncations, splices) of the
//!   valid encodings of `cairn_format::fuzz::seed_corpus()`;
//! - mutated *plaintexts* re-sealed with the fuzz key, so that the postcard decoders and the
//!   pack header checks behind authentication see garbage too (a byte-level fuzzer almost
//!   never gets past the Poly1305 tag).
//!
//! The seed is fixed, so a failure reproduces; `CAIRN_FUZZ_SMOKE_SEED` and
//! `CAIRN_FUZZ_SMOKE_ROUNDS` override it and the round count.

#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use cairn_format::fuzz::{fuzz_key, seed_corpus, TARGETS};
use cairn_format::{
    pack_header_aad_of, pack_payload, preamble, preamble_of, seal_with_nonce, FileKind,
    PREAMBLE_LEN,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run every entry point on `data`; on a panic, say which target and which input.
fn run_all(data: &[u8], origin: &str) {
    for (name, f) in TARGETS {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(data))) {
            eprintln!(
                "fuzz target {name} panicked on input from {origin}: {}",
                hex::encode(data)
            );
            std::panic::resume_unwind(p);
        }
    }
}

fn mutate(rng: &mut StdRng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..rng.random_range(1..=6) {
        let len = d.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                d.insert(i, rng.random());
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                d.remove(i);
            }
            4 => d.truncate(rng.random_range(0..=len)),
            5 if len > 0 => {
                // Interesting values: varint continuation bytes, 0, max.
                let i = rng.random_range(0..len);
                d[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
            }
            6 if len > 0 => {
                // Duplicate a slice in place.
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let chunk = d[a..b].to_vec();
                let at = rng.random_range(0..=d.len());
                d.splice(at..at, chunk);
            }
            7 if !pool.is_empty() => {
                // Splice: our head, another seed's tail.
                let other = &pool[rng.random_range(0..pool.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = rng.random_range(1..8);
                for _ in 0..n {
                    d.push(rng.random());
                }
            }
        }
    }
    d
}

/// Seal `plaintext` the way a sealed file of `kind` is stored, with the fuzz key.
fn reseal_file(rng: &mut StdRng, kind: FileKind, plaintext: &[u8]) -> Vec<u8> {
    // Index files have a version 2; either may be the one that decodes.
    let version = if kind == FileKind::Index && rng.random_bool(0.5) {
        2
    } else {
        1
    };
    reseal_file_at(rng, kind, version, plaintext)
}

/// [`reseal_file`] at an explicit version.
fn reseal_file_at(rng: &mut StdRng, kind: FileKind, version: u16, plaintext: &[u8]) -> Vec<u8> {
    let payload = if rng.random_bool(0.3) {
        pack_payload(plaintext, 3)
    } else {
        [&[0u8][..], plaintext].concat()
    };
    let pre = preamble_of(kind, version);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let mut out = pre.to_vec();
    out.extend(seal_with_nonce(
        &fuzz_key().encryption,
        &nonce,
        &pre,
        &payload,
    ));
    out
}

/// A pack whose header plaintext is `header` (possibly garbage), sealed with the fuzz key,
/// after `filler` bytes of "blobs".
fn reseal_pack(rng: &mut StdRng, header: &[u8]) -> Vec<u8> {
    let version = if rng.random_bool(0.5) { 2 } else { 1 };
    reseal_pack_at(rng, version, header)
}

/// [`reseal_pack`] at an explicit version.
fn reseal_pack_at(rng: &mut StdRng, version: u16, header: &[u8]) -> Vec<u8> {
    let mut pack = preamble_of(FileKind::Pack, version).to_vec();
    let filler = rng.random_range(0..200);
    for _ in 0..filler {
        pack.push(rng.random());
    }
    let payload = [&[0u8][..], header].concat();
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let sealed = seal_with_nonce(
        &fuzz_key().encryption,
        &nonce,
        &pack_header_aad_of(version),
        &payload,
    );
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    pack
}

#[test]
fn fuzz_entry_points_survive_random_and_mutated_inputs() {
    let seed = env_u64("CAIRN_FUZZ_SMOKE_SEED", 0x00c0_ffee);
    let rounds = env_u64("CAIRN_FUZZ_SMOKE_ROUNDS", 5000);
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = seed_corpus();
    assert!(seeds.len() >= 6, "every target needs seeds");
    for (target, _) in TARGETS {
        assert!(
            seeds.iter().any(|(t, _)| *t == target),
            "no seed for {target}"
        );
    }
    let pool: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    // Plaintext postcard seeds (no preamble) of the sealed kinds, to re-seal after mutation.
    let plain_seeds: Vec<(&str, Vec<u8>)> = seeds
        .iter()
        .filter(|(_, b)| !b.starts_with(b"cairn"))
        .map(|(t, b)| (*t, b.clone()))
        .collect();

    // The seeds themselves must be accepted by the entry points without panicking.
    for (t, b) in &seeds {
        run_all(b, &format!("seed for {t}"));
    }

    let mut count = 0u64;
    for round in 0..rounds {
        // 1. Random bytes, half of them behind a valid preamble of a random kind.
        let len = rng.random_range(0..400);
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if rng.random_bool(0.5) {
            let kind = FileKind::ALL[rng.random_range(0..FileKind::ALL.len())];
            let mut p = preamble(kind).to_vec();
            p.extend_from_slice(&d);
            d = p;
        }
        run_all(&d, &format!("random input, round {round}"));

        // 2. Mutated valid encodings.
        let (t, base) = &seeds[rng.random_range(0..seeds.len())];
        run_all(
            &mutate(&mut rng, base, &pool),
            &format!("mutated seed for {t}, round {round}"),
        );

        // 3. Mutated plaintexts behind valid authentication.
        let (t, base) = &plain_seeds[rng.random_range(0..plain_seeds.len())];
        let m = mutate(&mut rng, base, &pool);
        let sealed = match *t {
            "pack_header" => reseal_pack(&mut rng, &m),
            "index" => reseal_file(&mut rng, FileKind::Index, &m),
            "snapshot" => reseal_file(&mut rng, FileKind::Snapshot, &m),
            "config" => {
                let kind = if rng.random_bool(0.5) {
                    FileKind::Config
                } else {
                    FileKind::Lock
                };
                reseal_file(&mut rng, kind, &m)
            }
            _ => m.clone(),
        };
        run_all(&m, &format!("mutated plaintext for {t}, round {round}"));
        run_all(
            &sealed,
            &format!("re-sealed mutated plaintext for {t}, round {round}"),
        );
        count += 4;
    }
    assert!(count >= 4 * rounds);
}

#[test]
fn resealed_valid_plaintexts_decode() {
    // The re-sealing helpers above build what the decoders expect: unmutated plaintexts
    // re-sealed must decode (otherwise part 3 above would only test authentication failures).
    let mut rng = StdRng::seed_from_u64(1);
    let key = fuzz_key();
    for (t, b) in seed_corpus() {
        if b.starts_with(b"cairn") {
            continue;
        }
        match t {
            "index" => {
                let decoded: Vec<u16> = [1, 2, 3, 5]
                    .into_iter()
                    .filter(|&v| {
                        let f = reseal_file_at(&mut rng, FileKind::Index, v, &b);
                        cairn_format::IndexFile::decode_sealed(&key, &f).is_ok()
                    })
                    .collect();
                // Version 5 is version 3 plus tree groups: an index without them is both.
                assert!(
                    matches!(decoded[..], [_] | [3, 5]),
                    "an index seed decodes as exactly one version (3 and 5 count as one), not {decoded:?}"
                );
            }
            "snapshot" => {
                let f = reseal_file(&mut rng, FileKind::Snapshot, &b);
                cairn_format::decode_sealed::<cairn_format::Snapshot>(&key, FileKind::Snapshot, &f)
                    .unwrap();
            }
            "pack_header" => {
                // The seed header lists blobs at real offsets of another pack: the tiling check
                // must refuse it here, after authentication succeeded.
                for version in [1, 2, 5] {
                    let p = reseal_pack_at(&mut rng, version, &b);
                    let e = cairn_format::decode_pack_header(&key, &p).unwrap_err();
                    assert!(
                        matches!(e, cairn_format::FormatError::Malformed { .. }),
                        "{e:?}"
                    );
                    let empty = reseal_pack_at(&mut rng, version, &[0]);
                    if empty.len() == PREAMBLE_LEN + 42 + 4 {
                        cairn_format::decode_pack_header(&key, &empty).unwrap();
                    }
                }
            }
            _ => {}
        }
    }
}

/// Inputs the real fuzzer found, kept so that `cargo test` replays them.
#[test]
fn inputs_the_fuzzer_found() {
    // content_list: a one-id list whose count is the overlong varint `81 00` decoded, and
    // did not re-encode to its bytes (now refused: one encoding per list).
    let overlong =
        hex::decode("004c04008100000000000008ac0000000000000000000000000000000000acacacacacacac42")
            .unwrap();
    run_all(&overlong, "fuzz/artifacts/content_list/crash-df3911a8");
    assert!(cairn_format::decode_content_list(&overlong).is_err());
}
