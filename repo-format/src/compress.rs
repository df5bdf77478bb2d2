//! Compression of plaintext before sealing: one flag byte, then the payload.

use std::borrow::Cow;

use crate::FormatError;

/// Flag: the payload that follows is stored as is.
pub const FLAG_RAW: u8 = 0;
/// Flag: the payload that follows is one zstd frame.
pub const FLAG_ZSTD: u8 = 1;

/// Payloads up to this size are decompressed into one buffer of exactly the limit.
const BULK_LIMIT: usize = 64 << 20;

/// Compress `data` at `level` (0 = never compress) and prefix the flag byte.
///
/// Data that does not shrink is stored raw, so incompressible media costs one byte, not a
/// zstd frame that grew.
pub fn pack_payload(data: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    pack_payload_into(data, level, &mut out);
    out
}

/// [`pack_payload`], appended to `out`: the sealing path compresses straight into the buffer
/// it encrypts in place.
pub fn pack_payload_into(data: &[u8], level: i32, out: &mut Vec<u8>) {
    pack_payload_into_with(data, level, true, out);
}

/// [`pack_payload_into`], with the incompressibility estimate on or off. Tree blobs (§4 of
/// FORMAT.md) skip it: a tree that lists a large file's blobs is mostly random ids, which
/// [`looks_incompressible`] takes for media, yet the names, metadata and repeated ids among
/// them compress (measured on the K3s week: trees over 64 KiB were stored raw, ~1.2 MB more
/// of tree bytes over six nights). Index files, also mostly ids, keep it: zstd saved under
/// 1 % of them (35 bytes a blob either way), not worth a decompression on every load.
pub(crate) fn pack_payload_into_with(data: &[u8], level: i32, estimate: bool, out: &mut Vec<u8>) {
    let start = out.len();
    if level != 0 && data.len() >= 64 && !(estimate && looks_incompressible(data)) {
        out.push(FLAG_ZSTD);
        // zstd writes into the spare capacity after the flag; a frame that would not fit in
        // `data.len() - 1` bytes did not shrink, and zstd gives up on it as soon as it knows.
        let room = data.len() - 2;
        if compress_cached(data, level, out, room) {
            return;
        }
        out.truncate(start);
    }
    // Exact: `out` is usually a buffer reused for every blob of a thread, and doubling it
    // would keep up to twice the largest blob resident per thread.
    out.reserve_exact(data.len() + 1);
    out.push(FLAG_RAW);
    out.extend_from_slice(data);
}

thread_local! {
    /// One zstd compression context per thread, set to the level of the frame at hand:
    /// creating a context costs more than compressing a 4 KiB database page, and backups
    /// compress hundreds of thousands of those. A backup uses up to three levels (chunks,
    /// data groups, tree groups) in turn on every thread. Building a context per change of
    /// level mapped, faulted in and cleared its tables (megabytes) anew each time (a quarter
    /// of a first backup's page faults); one context per level kept the sum of their tables
    /// resident. A context whose level is changed keeps its workspace, sized for the largest
    /// level's tables, and zstd clears only the tables a frame uses.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compress `data` into `out` after its current end, in at most `room` bytes. Returns
/// whether it fitted (on `false`, `out` is unchanged).
fn compress_cached(data: &[u8], level: i32, out: &mut Vec<u8>, room: usize) -> bool {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some((l, c)) = slot.as_mut() {
            if *l != level {
                if c.set_compression_level(level).is_ok() {
                    *l = level;
                } else {
                    // Never store a blob raw for the context's sake: a fresh one below.
                    *slot = None;
                }
            }
        }
        if slot.is_none() {
            match zstd::bulk::Compressor::new(level) {
                Ok(c) => *slot = Some((level, c)),
                Err(_) => return false,
            }
        }
        let Some((_, compressor)) = slot.as_mut() else {
            return false;
        };
        let pos = out.len();
        out.reserve_exact(room);
        // zstd fills the spare capacity after `pos`; a frame larger than `room` (possible when
        // the allocator gave more) is refused below like one that did not fit.
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(pos as u64);
        match compressor.compress_to_buffer(data, &mut cursor) {
            Ok(n) if n <= room => true,
            _ => {
                out.truncate(pos);
                // A frame that ran out of room leaves the context mid-frame, where zstd
                // refuses to change its level ("not authorized at current processing
                // stage"): without this reset, every later change of level failed, and
                // the blobs it was for were stored raw (3 % of the real tree's repository).
                let _ = compressor
                    .context_mut()
                    .reset(zstd::zstd_safe::ResetDirective::SessionOnly);
                false
            }
        }
    })
}

fn decompress_cached(body: &[u8], limit: usize) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        // The buffer is sized by what the frame says it holds when that is within the limit
        // (a group of small blobs is read for one of them, and must not cost the group limit
        // each time); a frame that understates its size fails to fit and is refused.
        let capacity = match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(n)) if n <= limit as u64 => n as usize,
            _ => limit,
        };
        slot.as_mut()?.decompress(body, capacity).ok()
    })
}

/// Undo [`pack_payload`]. `limit` bounds the decompressed size (a hostile frame could
/// otherwise claim gigabytes).
pub fn unpack_payload(payload: &[u8], limit: usize, what: &str) -> Result<Vec<u8>, FormatError> {
    unpack_payload_ref(payload, limit, what).map(Cow::into_owned)
}

/// [`unpack_payload`] that borrows a raw payload instead of copying it.
pub fn unpack_payload_ref<'a>(
    payload: &'a [u8],
    limit: usize,
    what: &str,
) -> Result<Cow<'a, [u8]>, FormatError> {
    let (&flag, body) = payload
        .split_first()
        .ok_or(FormatError::Truncated("payload"))?;
    match flag {
        FLAG_RAW => Ok(Cow::Borrowed(body)),
        FLAG_ZSTD => {
            // Never size a buffer from the frame itself: a hostile frame can claim anything.
            // Small limits (blobs, whose exact length the index records) decode in one call;
            // large ones (metadata) stream and stop one byte past the limit.
            if limit <= BULK_LIMIT {
                return decompress_cached(body, limit)
                    .map(Cow::Owned)
                    .ok_or_else(|| {
                        // Say so when the frame claims more than the limit (a hostile or damaged
                        // object), rather than only that decompression failed.
                        match zstd::zstd_safe::get_frame_content_size(body) {
                            Ok(Some(n)) if n > limit as u64 => FormatError::Decompress(format!(
                                "{what} (larger than {limit} bytes)"
                            )),
                            _ => FormatError::Decompress(what.to_owned()),
                        }
                    });
            }
            let mut out = Vec::new();
            let dec = zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|_| FormatError::Decompress(what.to_owned()))?;
            std::io::Read::read_to_end(&mut std::io::Read::take(dec, limit as u64 + 1), &mut out)
                .map_err(|_| FormatError::Decompress(what.to_owned()))?;
            if out.len() > limit {
                return Err(FormatError::Decompress(format!(
                    "{what} (larger than {limit} bytes)"
                )));
            }
            Ok(Cow::Owned(out))
        }
        other => Err(FormatError::Malformed {
            what: "payload",
            detail: format!("unknown compression flag {other}"),
        }),
    }
}

/// A cheap entropy estimate: compressed media (JPEG, MP4, zstd, gzip) has a near-flat byte
/// histogram. Sampling 4 KiB costs far less than a zstd attempt on a 1 MiB chunk.
pub fn looks_incompressible(data: &[u8]) -> bool {
    // Below 64 KiB a zstd attempt is as cheap as the estimate (and database pages, the
    // commonest small blobs, usually compress).
    if data.len() < 64 << 10 {
        return false;
    }
    let mut hist = [0u32; 256];
    let step = (data.len() / 4096).max(1);
    let mut n = 0u32;
    for i in (0..data.len()).step_by(step).take(4096) {
        hist[data[i] as usize] += 1;
        n += 1;
    }
    let n = f64::from(n);
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    // 4096 uniform samples over 256 symbols give ~7.95 bits; text is ~4-5, sparse DB pages lower.
    entropy > 7.9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a long content list looks like: random 32-byte ids, some repeated (a database's
    /// identical pages), so that the byte entropy is that of media while zstd still finds
    /// the repeats.
    fn id_list() -> Vec<u8> {
        let mut ids = vec![0u8; 2048 * 32];
        blake3::Hasher::new()
            .update(b"ids")
            .finalize_xof()
            .fill(&mut ids);
        let repeated = ids[..1024 * 32].to_vec();
        ids.extend_from_slice(&repeated);
        ids
    }

    fn packed_without_estimate(data: &[u8], level: i32) -> Vec<u8> {
        let mut out = Vec::new();
        pack_payload_into_with(data, level, false, &mut out);
        out
    }

    #[test]
    fn trees_are_always_compressed_where_data_is_estimated() {
        let ids = id_list();
        assert!(looks_incompressible(&ids));
        let data = pack_payload(&ids, 3);
        assert_eq!(data[0], FLAG_RAW, "the estimate skips zstd for data");
        let tree = packed_without_estimate(&ids, 3);
        assert_eq!(tree[0], FLAG_ZSTD);
        assert!(
            tree.len() < ids.len() * 3 / 4,
            "{} of {}",
            tree.len(),
            ids.len()
        );
        for packed in [&data, &tree] {
            assert_eq!(
                unpack_payload(packed, ids.len(), "t").ok(),
                Some(ids.clone())
            );
        }
        // Bytes that do not shrink are still stored raw.
        let mut random = vec![0u8; 100_000];
        blake3::Hasher::new()
            .update(b"random")
            .finalize_xof()
            .fill(&mut random);
        assert_eq!(packed_without_estimate(&random, 3)[0], FLAG_RAW);
        assert_eq!(
            packed_without_estimate(&ids, 0)[0],
            FLAG_RAW,
            "level 0 never compresses"
        );
    }

    #[test]
    fn tree_blobs_skip_the_estimate_and_data_blobs_keep_it() {
        use crate::{open_blob, seal_blob, BlobType, MasterKey};
        let key = MasterKey::generate();
        let ids = id_list();
        let id = key.blob_id(&ids);
        let tree = seal_blob(&key, BlobType::Tree, &id, &ids, 2);
        let data = seal_blob(&key, BlobType::Data, &id, &ids, 2);
        assert!(
            tree.len() < ids.len() * 3 / 4,
            "{} of {}",
            tree.len(),
            ids.len()
        );
        assert!(data.len() > ids.len());
        let raw = ids.len() as u32;
        assert_eq!(
            open_blob(&key, BlobType::Tree, &id, &tree, raw).ok(),
            Some(ids.clone())
        );
        assert_eq!(
            open_blob(&key, BlobType::Data, &id, &data, raw).ok(),
            Some(ids)
        );
    }

    /// Contexts reused across levels (a backup alternates chunks, data groups and tree
    /// groups on every thread) must compress exactly as fresh ones do: no parameter or table
    /// of one level may leak into another's frames, and a frame that failed (incompressible
    /// data) must not keep the next one, at another level, from being compressed.
    #[test]
    fn cached_contexts_compress_as_fresh_ones_whatever_the_order_of_levels(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of {}\n", i % 977, i / 13).into_bytes())
            .collect();
        // Random bytes do not fit in their own length: each such frame fails mid-way.
        let mut noise = vec![0u8; 300_000];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for &level in &[2, 6, 3, 2, 1, 9, 2, 6, 6, 3, 19, 2] {
            let mut raw = Vec::new();
            pack_payload_into_with(&noise, level, false, &mut raw);
            assert_eq!(raw[0], FLAG_RAW, "level {level}");
            let mut cached = Vec::new();
            pack_payload_into_with(&text, level, false, &mut cached);
            let fresh = zstd::bulk::Compressor::new(level)?.compress(&text)?;
            assert_eq!(cached[0], FLAG_ZSTD, "level {level}");
            assert_eq!(&cached[1..], &fresh[..], "level {level}");
            assert_eq!(
                unpack_payload(&cached, text.len(), "test")?,
                text,
                "level {level}"
            );
        }
        Ok(())
    }
}
