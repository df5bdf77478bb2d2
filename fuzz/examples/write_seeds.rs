//! Write valid encodings into `fuzz/corpus/<target>/` as a seed corpus.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds` (from the repository root,
//! or pass the corpus directory as the only argument). libFuzzer's `main` is not involved:
//! this example has its own.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut n = 0;
    for (target, bytes) in cairn_format::fuzz::seed_corpus() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        // Content-addressed names, like libFuzzer's own corpus files.
        let name = cairn_format::Id::of_object(&bytes).to_hex();
        std::fs::write(dir.join(&name[..16]), &bytes)?;
        n += 1;
    }
    println!("wrote {n} seed inputs under {}", root.display());
    Ok(())
}
