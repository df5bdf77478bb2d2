//! Measure day-over-day dedup of a series of files under several chunking schemes.
//!
//! `cargo run --release -p cairn-engine --example chunk_study -- DAY1_FILE DAY2_FILE ...`
//!
//! For each scheme prints, per day after the first, the new (never seen) chunk bytes and
//! their zstd-3 compressed size, and the totals over days 2..N. Used to choose the chunking
//! policy for database files (docs/chunking.md).

use std::collections::HashSet;

use cairn_engine::chunker::Chunker;
use cairn_format::ChunkerParams;

enum Scheme {
    Cdc(u32, u32, u32),
    Fixed(usize),
}

fn cuts(s: &Scheme, data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    match s {
        Scheme::Cdc(min, avg, max) => {
            let c = Chunker::new(
                &ChunkerParams {
                    min_size: *min,
                    avg_size: *avg,
                    max_size: *max,
                    normalization: 1,
                },
                0x1234,
            );
            let mut start = 0;
            for e in c.boundaries(data) {
                out.push((start, e));
                start = e;
            }
        }
        Scheme::Fixed(n) => {
            let mut start = 0;
            while start < data.len() {
                let e = (start + n).min(data.len());
                out.push((start, e));
                start = e;
            }
        }
    }
    out
}

/// What a file looks like from its first bytes.
fn detect(h: &[u8], len: u64) -> &'static str {
    if h.starts_with(b"SQLite format 3\0") {
        "sqlite"
    } else if h.len() >= 20 && h[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
        "bbolt"
    } else if h.len() >= 24
        && len.is_multiple_of(8192)
        && u16::from_le_bytes([h[18], h[19]]) == 0x2004
    {
        "postgres"
    } else if h.len() >= 4 && len == 16 << 20 && h[1] == 0xD1 {
        "pg-wal"
    } else {
        "other"
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .collect();
    v.sort();
    for p in v {
        let m = std::fs::symlink_metadata(&p).expect("meta");
        if m.is_dir() {
            walk(&p, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

fn dirs_mode(dirs: &[String]) {
    // 0 = small, 1 = mid, 2 = bulk
    let schemes = [
        Scheme::Cdc(2 << 10, 8 << 10, 32 << 10),
        Scheme::Cdc(64 << 10, 128 << 10, 512 << 10),
        Scheme::Cdc(512 << 10, 1 << 20, 8 << 20),
        Scheme::Fixed(4096),
        Scheme::Fixed(8192),
        Scheme::Cdc(1 << 10, 4 << 10, 16 << 10),
    ];
    type Pol = fn(&str) -> usize;
    let policies: [(&str, Pol); 6] = [
        ("all bulk 1M", |_| 2),
        ("per-format pages", |k| match k {
            "sqlite" => 3,
            "postgres" | "pg-wal" => 4,
            "bbolt" => 0,
            _ => 2,
        }),
        ("per-format pages b1K", |k| match k {
            "sqlite" => 3,
            "postgres" | "pg-wal" => 4,
            "bbolt" => 5,
            _ => 2,
        }),
        ("db small, rest bulk", |k| if k == "other" { 2 } else { 0 }),
        ("db small, rest 128K", |k| if k == "other" { 1 } else { 0 }),
        ("all 128K", |_| 1),
    ];
    for (name, pol) in policies {
        let pol = |k: &str| &schemes[pol(k)];
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut per_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        let (mut raw, mut stored, mut blobs) = (0usize, 0usize, 0usize);
        let mut days = Vec::new();
        let mut by_dir: std::collections::BTreeMap<String, usize> = Default::default();
        for (d, dir) in dirs.iter().enumerate() {
            let mut files = Vec::new();
            walk(std::path::Path::new(dir), &mut files);
            let mut day_stored = 0;
            for f in files {
                let data = std::fs::read(&f).expect("read");
                let kind = detect(&data[..data.len().min(64)], data.len() as u64);
                for (a, b) in cuts(pol(kind), &data) {
                    let h = *blake3::hash(&data[a..b]).as_bytes();
                    if seen.insert(h) && d > 0 {
                        let c = zstd::bulk::compress(
                            &data[a..b],
                            std::env::var("STUDY_LEVEL")
                                .ok()
                                .and_then(|l| l.parse().ok())
                                .unwrap_or(3),
                        )
                        .map(|c| c.len())
                        .unwrap_or(b - a)
                        .min(b - a)
                            + 97;
                        day_stored += c;
                        blobs += 1;
                        per_kind.entry(kind).or_default().1 += c;
                        if std::env::var_os("STUDY_BY_DIR").is_some()
                            && name.starts_with("db small, rest 128K")
                        {
                            let rel = f.strip_prefix(dir).unwrap_or(&f);
                            let key: std::path::PathBuf = rel.components().take(2).collect();
                            *by_dir
                                .entry(format!("{kind}:{}", key.display()))
                                .or_default() += c;
                        }
                    }
                }
                if d > 0 {
                    raw += data.len();
                    per_kind.entry(kind).or_default().0 += data.len();
                }
            }
            if d > 0 {
                stored += day_stored;
                days.push(format!("{:.0}", day_stored as f64 / 1e6));
            }
        }
        let mut dirs: Vec<_> = by_dir.into_iter().collect();
        dirs.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
        for (k, v) in dirs.iter().take(15) {
            println!("    {k:<60} {:.1} MB", *v as f64 / 1e6);
        }
        let kinds: Vec<String> = per_kind
            .iter()
            .map(|(k, (r, s))| format!("{k} {:.1}%", 100.0 * *s as f64 / (*r).max(1) as f64))
            .collect();
        println!(
            "{name:<22} raw {:.0} MB stored {:.1} MB ({:.2} %) blobs {blobs} per day MB [{}] by kind: {}",
            raw as f64 / 1e6,
            stored as f64 / 1e6,
            100.0 * stored as f64 / raw as f64,
            days.join(" "),
            kinds.join(", ")
        );
    }
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.first().is_some_and(|f| f == "--dirs") {
        return dirs_mode(&files[1..]);
    }
    let days: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let schemes = [
        ("cdc 512K/1M/8M", Scheme::Cdc(512 << 10, 1 << 20, 8 << 20)),
        (
            "cdc 64K/128K/512K",
            Scheme::Cdc(64 << 10, 128 << 10, 512 << 10),
        ),
        ("cdc 8K/32K/128K", Scheme::Cdc(8 << 10, 32 << 10, 128 << 10)),
        ("cdc 4K/16K/64K", Scheme::Cdc(4 << 10, 16 << 10, 64 << 10)),
        ("cdc 2K/8K/32K", Scheme::Cdc(2 << 10, 8 << 10, 32 << 10)),
        ("cdc 1K/4K/16K", Scheme::Cdc(1 << 10, 4 << 10, 16 << 10)),
        ("fixed 4K", Scheme::Fixed(4096)),
        ("fixed 8K", Scheme::Fixed(8192)),
        ("fixed 16K", Scheme::Fixed(16384)),
        ("fixed 64K", Scheme::Fixed(65536)),
    ];
    let raw: usize = days.iter().skip(1).map(Vec::len).sum();
    println!(
        "{} files, days 2..N raw {:.1} MB",
        days.len(),
        raw as f64 / 1e6
    );
    for (name, s) in &schemes {
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let (mut new_total, mut comp_total, mut blobs_total) = (0usize, 0usize, 0usize);
        let mut per_day = Vec::new();
        for (d, data) in days.iter().enumerate() {
            let (mut new, mut comp, mut blobs) = (0, 0, 0);
            for (a, b) in cuts(s, data) {
                let h = *blake3::hash(&data[a..b]).as_bytes();
                if seen.insert(h) {
                    new += b - a;
                    blobs += 1;
                    // Stored size: zstd-3 unless it does not shrink, plus the 41 bytes of
                    // flag + nonce + tag and ~56 bytes of pack header + index entry.
                    let c = zstd::bulk::compress(
                        &data[a..b],
                        std::env::var("STUDY_LEVEL")
                            .ok()
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(3),
                    )
                    .map(|c| c.len())
                    .unwrap_or(b - a)
                    .min(b - a);
                    comp += c + 41 + 56;
                }
            }
            if d > 0 {
                new_total += new;
                comp_total += comp;
                blobs_total += blobs;
                per_day.push(format!("{:.1}", comp as f64 / 1e6));
            }
        }
        println!(
            "{name:<18} new {:>7.1} MB ({:>5.1} %)  stored {:>7.1} MB ({:>5.1} %)  blobs {:>7}  per day stored MB: {}",
            new_total as f64 / 1e6,
            100.0 * new_total as f64 / raw as f64,
            comp_total as f64 / 1e6,
            100.0 * comp_total as f64 / raw as f64,
            blobs_total,
            per_day.join(" ")
        );
    }
}
