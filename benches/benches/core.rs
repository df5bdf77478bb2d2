//! Micro-benchmarks of cairn's per-byte hot paths.
//!
//! Groups: `chunker` (sequential vs two-stage parallel FastCDC, plus the `fastcdc` crate as
//! reference), `blob_id` (keyed BLAKE3), `seal` / `open` (compress + XChaCha20-Poly1305),
//! `zstd` (compression alone) and `packer` (64 × 1 MiB blobs into a real local repository).
//!
//! The default run is short (10 samples, a few seconds each). `cargo bench -p cairn-benches --
//! --quick` is quicker still; pass a group name to run only that group, e.g. `-- chunker`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cairn_benches::{mixed_bytes, random_bytes, text_bytes};
use cairn_engine::chunker::Chunker;
use cairn_engine::packer::Packer;
use cairn_engine::{InitOptions, LocalBackend, MasterIndex, Repository};
use cairn_format::{open_blob, seal_blob, BlobType, ChunkerParams, KdfParams, MasterKey};
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};

const MIB: usize = 1 << 20;

fn chunker(c: &mut Criterion) {
    let data = random_bytes(1, 64 * MIB);
    let params = ChunkerParams::default_bulk();
    let seed = 0x0123_4567_89ab_cdef;
    let ch = Chunker::new(&params, seed);
    // Sanity: all three cutters agree, so they are measuring the same work.
    let seq = ch.boundaries(&data);
    assert_eq!(seq, ch.boundaries_parallel(&data, true, MIB));
    let reference: Vec<usize> = fastcdc::v2020::FastCDC::with_level_and_seed(
        &data,
        params.min_size as usize,
        params.avg_size as usize,
        params.max_size as usize,
        fastcdc::v2020::Normalization::Level1,
        seed,
    )
    .map(|c| c.offset + c.length)
    .collect();
    assert_eq!(seq, reference);

    let mut g = c.benchmark_group("chunker");
    // Tens of ms per iteration: flat sampling keeps the run to ~10 iterations per sample set.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sequential_64MiB", |b| {
        b.iter(|| black_box(ch.boundaries(black_box(&data))))
    });
    // The two-stage cutter on 1 thread shows its per-byte cost (it hashes every byte; the
    // sequential cutter skips the first `min_size` bytes of each chunk).
    let mut threads = vec![1, rayon::current_num_threads()];
    threads.dedup();
    for n in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("thread pool");
        g.bench_function(BenchmarkId::new("parallel_64MiB", format!("{n}thr")), |b| {
            b.iter(|| {
                pool.install(|| black_box(ch.boundaries_parallel(black_box(&data), true, MIB)))
            })
        });
    }
    g.bench_function("fastcdc_crate_v2020_64MiB", |b| {
        b.iter(|| {
            let it = fastcdc::v2020::FastCDC::with_level_and_seed(
                black_box(&data),
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
                fastcdc::v2020::Normalization::Level1,
                seed,
            );
            black_box(it.count())
        })
    });
    g.finish();
}

fn blob_id(c: &mut Criterion) {
    let key = MasterKey::generate();
    let data = random_bytes(2, MIB);
    let mut g = c.benchmark_group("blob_id");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("keyed_blake3_1MiB", |b| {
        b.iter(|| black_box(key.blob_id(black_box(&data))))
    });
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let key = MasterKey::generate();
    let inputs = [
        ("text", text_bytes(3, MIB)),
        ("random", random_bytes(3, MIB)),
    ];
    let mut g = c.benchmark_group("seal");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, data) in &inputs {
        let id = key.blob_id(data);
        for level in [3, 0] {
            let sealed = seal_blob(&key, BlobType::Data, &id, data, level);
            eprintln!(
                "seal {name} zstd={level}: 1 MiB -> {} bytes sealed",
                sealed.len()
            );
            g.bench_function(
                BenchmarkId::new(format!("{name}_1MiB"), format!("zstd{level}")),
                |b| {
                    b.iter(|| {
                        black_box(seal_blob(&key, BlobType::Data, &id, black_box(data), level))
                    })
                },
            );
        }
    }
    g.finish();

    let mut g = c.benchmark_group("open");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, data) in &inputs {
        let id = key.blob_id(data);
        for level in [3, 0] {
            let sealed = seal_blob(&key, BlobType::Data, &id, data, level);
            let raw = data.len() as u32;
            // open_blob = decrypt + decompress + keyed BLAKE3 verification of the plaintext.
            g.bench_function(
                BenchmarkId::new(format!("{name}_1MiB"), format!("zstd{level}")),
                |b| {
                    b.iter(|| {
                        black_box(open_blob(
                            &key,
                            BlobType::Data,
                            &id,
                            black_box(&sealed),
                            raw,
                        ))
                    })
                },
            );
        }
    }
    g.finish();
}

fn zstd_compress(c: &mut Criterion) {
    let data = text_bytes(4, MIB);
    let mut g = c.benchmark_group("zstd");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1, 3] {
        let out = zstd::bulk::compress(&data, level).unwrap_or_default();
        eprintln!(
            "zstd level {level}: text 1 MiB -> {} bytes ({:.2}x)",
            out.len(),
            data.len() as f64 / out.len() as f64
        );
        g.bench_function(
            BenchmarkId::new("compress_text_1MiB", format!("level{level}")),
            |b| b.iter(|| black_box(zstd::bulk::compress(black_box(&data), level))),
        );
    }
    // The repository path: entropy check + zstd + flag byte (what seal_blob compresses with).
    g.bench_function(BenchmarkId::new("pack_payload_text_1MiB", "level3"), |b| {
        b.iter(|| black_box(cairn_format::pack_payload(black_box(&data), 3)))
    });
    let compressed = zstd::bulk::compress(&data, 3).unwrap_or_default();
    g.bench_function(BenchmarkId::new("decompress_text_1MiB", "level3"), |b| {
        b.iter(|| black_box(zstd::bulk::decompress(black_box(&compressed), 2 * MIB)))
    });
    g.finish();
}

/// A fresh repository in a temp dir (cheap KDF, default chunker, pack size and level).
fn fresh_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
    let opts = InitOptions {
        kdf: KdfParams::new(8 * 1024, 1, 1),
        ..InitOptions::default()
    };
    let repo = Repository::init(backend, b"bench", opts).expect("init");
    (dir, repo)
}

fn packer(c: &mut Criterion) {
    const BLOBS: usize = 64;
    let mut g = c.benchmark_group("packer");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes((BLOBS * MIB) as u64));
    for (name, gen) in [
        ("random", random_bytes as fn(u64, usize) -> Vec<u8>),
        ("mixed", mixed_bytes as fn(u64, usize) -> Vec<u8>),
    ] {
        let blobs: Vec<Vec<u8>> = (0..BLOBS).map(|i| gen(100 + i as u64, MIB)).collect();
        // Repository creation and blob ids are outside the timed part: this measures seal +
        // pack + upload (with fsync) + index, called from rayon workers as the archiver does.
        g.bench_function(BenchmarkId::new("add_64x1MiB", name), |b| {
            b.iter_batched(
                || {
                    let (dir, repo) = fresh_repo();
                    // Blob ids depend on the repository key.
                    let ids: Vec<_> = blobs.iter().map(|b| repo.key().blob_id(b)).collect();
                    (dir, repo, ids)
                },
                |(dir, repo, ids)| {
                    use rayon::prelude::*;
                    let p = Packer::new(&repo, Arc::new(MasterIndex::default()));
                    blobs
                        .par_iter()
                        .zip(ids.par_iter())
                        .try_for_each(|(b, id)| p.add(BlobType::Data, *id, b).map(|_| ()))
                        .expect("add");
                    let packs = p.finish().expect("finish");
                    black_box(packs.len());
                    drop(p);
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, chunker, blob_id, seal_open, zstd_compress, packer);
criterion_main!(benches);
