//! Shared helpers for the cairn benchmarks: deterministic test data.
//!
//! Everything here is deterministic (fixed seeds), so two runs measure the same bytes.

/// A small xorshift64* generator: fast, deterministic, good enough for benchmark data.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `len` bytes of incompressible pseudo-random data.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

const WORDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "app",
    "spec",
    "containers",
    "image",
    "resources",
    "limits",
    "requests",
    "cpu",
    "memory",
    "status",
    "ready",
    "true",
    "false",
    "null",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "GET",
    "POST",
    "/api/v1",
    "pods",
    "deployment",
    "replicas",
    "selector",
    "matchLabels",
    "volume",
    "mountPath",
    "/var/lib",
    "config",
    "value",
    "key",
    "port",
    "protocol",
    "TCP",
    "http",
    "https",
    "timeout",
    "retry",
    "backup",
    "restore",
    "snapshot",
    "chunk",
    "index",
    "pack",
    "tree",
    "blob",
    "user",
    "password",
];

/// `len` bytes of text-like data (log/YAML-ish lines drawn from a small vocabulary, with
/// numbers and timestamps), which zstd compresses roughly 3-6×.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut v = Vec::with_capacity(len + 256);
    let mut t = 1_714_521_600u64;
    while v.len() < len {
        t += rng.below(5) as u64;
        v.extend_from_slice(format!("{t} ").as_bytes());
        let indent = rng.below(4) * 2;
        v.extend(std::iter::repeat_n(b' ', indent));
        let n = 3 + rng.below(10);
        for i in 0..n {
            if i > 0 {
                v.push(if rng.below(4) == 0 { b':' } else { b' ' });
            }
            if rng.below(8) == 0 {
                v.extend_from_slice(format!("{}", rng.below(100_000)).as_bytes());
            } else {
                v.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            }
        }
        v.push(b'\n');
    }
    v.truncate(len);
    v
}

/// Half text-like, half random, interleaved in 64 KiB runs: a stand-in for a tree of mixed
/// files (compressible part still goes through zstd, random part is stored raw).
pub fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    let text = text_bytes(seed, len / 2 + (64 << 10));
    let rand = random_bytes(seed ^ 0x5555, len / 2 + (64 << 10));
    let mut v = Vec::with_capacity(len);
    let mut i = 0;
    while v.len() < len {
        let src = if (i / (64 << 10)) % 2 == 0 {
            &text
        } else {
            &rand
        };
        let off = (i / 2) % (src.len() - (64 << 10));
        v.extend_from_slice(&src[off..off + (64 << 10)]);
        i += 64 << 10;
    }
    v.truncate(len);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_sized() {
        assert_eq!(random_bytes(1, 1000), random_bytes(1, 1000));
        assert_eq!(text_bytes(1, 5000).len(), 5000);
        assert_eq!(mixed_bytes(3, 300_000).len(), 300_000);
        assert_ne!(random_bytes(1, 64), random_bytes(2, 64));
    }
}
