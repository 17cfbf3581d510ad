//! Decompression of compressed clusters, shared by the library and the ublk queues, and
//! compression of the clusters `imgblk convert -c` writes.
//!
//! zstd (qcow2 `compression_type` 1) is coded with libzstd (the `zstd` crate), the library
//! QEMU itself uses: continuously fuzzed upstream, and several times as fast as the
//! pure-Rust `ruzstd` used before (`benches/results/2026-12-07-convert.md` measured
//! `ruzstd` as the bottleneck of reading zstd images). Memory is bounded before anything
//! is decoded: a frame may ask for at most [`MAX_ZSTD_WINDOW`] of history, and output
//! beyond the cluster is an error as soon as the decoder produces it.

use super::Codec;
use crate::error::{Error, Result};

/// Decompresses `input` into exactly `out.len()` bytes (one cluster). A stream that ends
/// early or does not decode is an error: a cluster is never half-filled silently.
pub fn decompress(codec: Codec, input: &[u8], out: &mut [u8]) -> Result<()> {
    let whole = out.len();
    decompress_prefix(codec, input, out, whole)
}

/// Decompresses the first `out.len()` bytes of a cluster of `cluster_len` bytes from
/// `input`, and stops there: a read of a piece near the start of a cluster does not pay
/// for the rest of it. A stream that ends before `out` is full, or does not decode as far,
/// is an error; with `out.len() == cluster_len` this is [`decompress`], which also refuses
/// a zstd frame that decodes past the cluster.
pub fn decompress_prefix(
    codec: Codec,
    input: &[u8],
    out: &mut [u8],
    cluster_len: usize,
) -> Result<()> {
    let whole = out.len() >= cluster_len;
    match codec {
        Codec::Deflate => inflate(input, out, false, whole),
        Codec::Zlib => inflate(input, out, true, whole),
        Codec::Zstd => unzstd(input, out, cluster_len),
    }
}

/// Compresses one cluster as QEMU's qcow2 driver does: raw deflate with a 4 KiB window
/// (QEMU inflates with window bits -12, so a longer match would not decode there), or one
/// zstd frame. `None` when the result is not shorter than `limit` bytes: the cluster is
/// then better stored as it is.
pub fn compress(codec: Codec, input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let packed = match codec {
        Codec::Deflate | Codec::Zlib => {
            let level = flate2::Compression::default();
            let mut state = flate2::Compress::new_with_window_bits(level, codec == Codec::Zlib, 12);
            let mut out = Vec::with_capacity(limit);
            let status = state
                .compress_vec(input, &mut out, flate2::FlushCompress::Finish)
                .ok()?;
            if status != flate2::Status::StreamEnd {
                return None; // did not fit in `limit`
            }
            out
        }
        // One frame with its content size, as QEMU writes (its default level, 3).
        Codec::Zstd => zstd::bulk::compress(input, 3).ok()?,
    };
    (packed.len() < limit).then_some(packed)
}

/// Largest zstd window (history the decoder keeps) a frame may ask for. QEMU compresses
/// each cluster in one call with its size known, so its windows are at most the cluster
/// size (2 MiB at most); the margin admits other encoders without letting a hostile frame
/// make the decoder reserve what zstd allows (up to 2 GiB on 64-bit hosts).
pub const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// Decodes zstd frames from `input` until `out` is full, as QEMU's
/// `qcow2_zstd_decompress` does: a cluster may be stored as several frames (skippable
/// frames are skipped), and whatever follows the frame that fills `out` is sector padding
/// and ignored. A frame that would decode past the end of `out` is corrupt, and so is
/// input that ends before `out` is full. Each frame's header is checked before libzstd
/// sees it ([`check_zstd_frame`]), and the decoder refuses windows beyond
/// [`MAX_ZSTD_WINDOW`] itself.
///
/// `out` may be the first part of a cluster of `cluster_len` bytes only: decoding then
/// stops once it is full (frame headers are still checked against the whole cluster).
fn unzstd(input: &[u8], out: &mut [u8], cluster_len: usize) -> Result<()> {
    use zstd::zstd_safe::{get_error_name, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

    thread_local! {
        /// A decoder per thread, reused: making one per cluster cost more than decoding
        /// a 4 KiB piece of it. It keeps its window (at most [`MAX_ZSTD_WINDOW`]).
        static DECODER: std::cell::RefCell<Option<DCtx<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let corrupt = |code| zstd_corrupt(get_error_name(code).to_string());
    DECODER.with(|decoder| {
        let mut decoder = decoder.borrow_mut();
        let dctx = match decoder.as_mut() {
            // A failed call may have left it inside a frame.
            Some(dctx) => {
                dctx.reset(ResetDirective::SessionOnly).map_err(corrupt)?;
                dctx
            }
            None => {
                let mut dctx = DCtx::create();
                dctx.set_parameter(DParameter::WindowLogMax(MAX_ZSTD_WINDOW.ilog2()))
                    .map_err(corrupt)?;
                decoder.insert(dctx)
            }
        };
        let len = out.len();
        let mut source = InBuffer::around(input);
        let mut target = OutBuffer::around(out);
        // Where the frame being decoded starts; `None` between frames.
        let mut frame = None;
        while target.pos() < len {
            frame = zstd_step(dctx, &mut source, &mut target, frame, cluster_len)?;
        }
        if len < cluster_len {
            return Ok(());
        }
        // Full: the frame must end here (its checksum may still follow), giving nothing
        // more.
        let filled = target.pos();
        let mut spare = [0u8; 1];
        let mut beyond = OutBuffer::around(&mut spare[..]);
        while let Some(at) = frame {
            frame = zstd_step(dctx, &mut source, &mut beyond, frame, filled + 1)?;
            if beyond.pos() > 0 {
                return Err(zstd_corrupt(format!(
                    "frame at byte {at} decodes to more than the {len}-byte cluster"
                )));
            }
        }
        Ok(())
    })
}

/// One call of the decoder for [`unzstd`], in the frame starting at input byte `frame`
/// (`None`: a frame starts here, whose header is checked first; `room` is the cluster's
/// size, for that check). Returns where the frame still being decoded starts.
fn zstd_step(
    dctx: &mut zstd::zstd_safe::DCtx,
    source: &mut zstd::zstd_safe::InBuffer,
    target: &mut zstd::zstd_safe::OutBuffer<[u8]>,
    frame: Option<usize>,
    room: usize,
) -> Result<Option<usize>> {
    let input = source.src;
    let at = match frame {
        Some(at) => at,
        None => {
            let at = source.pos();
            if at == input.len() {
                return Err(zstd_corrupt(format!(
                    "the compressed data ends after {} of {room} bytes",
                    target.pos()
                )));
            }
            check_zstd_frame(&input[at..], (room - target.pos()) as u64).map_err(|e| {
                zstd_corrupt(format!("frame at byte {at} of the compressed data {e}"))
            })?;
            at
        }
    };
    let before = (source.pos(), target.pos());
    let left = dctx.decompress_stream(target, source).map_err(|code| {
        zstd_corrupt(format!(
            "frame at byte {at}: {}",
            zstd::zstd_safe::get_error_name(code)
        ))
    })?;
    if (source.pos(), target.pos()) == before {
        return Err(zstd_corrupt(format!(
            "frame at byte {at} ends before its end (after {} bytes of output)",
            target.pos()
        )));
    }
    Ok((left != 0).then_some(at))
}

/// A corrupt zstd-compressed cluster, saying `what` is wrong.
fn zstd_corrupt(what: String) -> Error {
    Error::corrupt(format!("zstd-compressed cluster: {what}"))
}

/// Checks a zstd frame header at the start of `input` before the decoder allocates for
/// it: its window must be at most [`MAX_ZSTD_WINDOW`] and its declared content size, if
/// any, at most `room`. Returns what is wrong, phrased to follow "frame at byte N".
/// Skippable frames and anything that is not a frame are left to the decoder.
fn check_zstd_frame(input: &[u8], room: u64) -> std::result::Result<(), String> {
    const MAGIC: u32 = 0xFD2F_B528;
    let byte = |i: usize| {
        input
            .get(i)
            .copied()
            .map(u64::from)
            .ok_or_else(|| format!("has a truncated header ({} bytes)", input.len()))
    };
    let magic = (0..4).try_fold(0u32, |m, i| {
        Ok::<_, String>(m | (byte(i)? as u32) << (8 * i))
    })?;
    if magic != MAGIC {
        return Ok(());
    }
    let descriptor = byte(4)?;
    let single_segment = descriptor & 0x20 != 0;
    let mut pos = 5;
    let mut window = None;
    if !single_segment {
        let wd = byte(5)?;
        let base = 1u64 << (10 + (wd >> 3));
        window = Some(base + (base / 8) * (wd & 7));
        pos = 6;
    }
    pos += [0, 1, 2, 4][(descriptor & 3) as usize];
    let fcs_len = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let content_size = if fcs_len == 0 {
        None
    } else {
        let mut v = 0u64;
        for i in 0..fcs_len {
            v |= byte(pos + i)? << (8 * i);
        }
        Some(if fcs_len == 2 { v + 256 } else { v })
    };
    if let Some(size) = content_size.filter(|&s| s > room) {
        return Err(format!(
            "declares {size} bytes of content, more than the {room} bytes left in the cluster"
        ));
    }
    let window = window.or(content_size).unwrap_or(0);
    if window > MAX_ZSTD_WINDOW {
        return Err(format!(
            "asks for a {window}-byte window, more than the {MAX_ZSTD_WINDOW} accepted"
        ));
    }
    Ok(())
}

/// Inflates a deflate stream, raw or inside a zlib wrapper (`zlib_header`). Bytes after
/// the end of the stream are ignored: callers read an upper bound of the stored length.
/// With `whole` false, `out` is the first part of the cluster only, and inflating stops
/// once it is full.
fn inflate(input: &[u8], out: &mut [u8], zlib_header: bool, whole: bool) -> Result<()> {
    let mut state = flate2::Decompress::new(zlib_header);
    let flush = if whole {
        flate2::FlushDecompress::Finish
    } else {
        flate2::FlushDecompress::None
    };
    state
        .decompress(input, out, flush)
        .map_err(|e| Error::corrupt(format!("compressed cluster does not inflate: {e}")))?;
    let produced = state.total_out() as usize;
    if produced != out.len() {
        return Err(Error::corrupt(format!(
            "compressed cluster inflates to {produced} bytes, expected {}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn round_trip_with_trailing_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut packed = deflate(&data);
        packed.extend_from_slice(&[0xAA; 300]); // qcow2 reads whole sectors past the stream
        let mut out = vec![0u8; data.len()];
        decompress(Codec::Deflate, &packed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn short_stream_is_corrupt() {
        let packed = deflate(&[1u8; 1000]);
        let mut out = vec![0u8; 4096];
        let err = decompress(Codec::Deflate, &packed, &mut out).unwrap_err();
        assert!(err.to_string().contains("expected 4096"), "{err}");
    }

    #[test]
    fn zlib_wrapped_round_trip() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 13) as u8).collect();
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let mut packed = enc.finish().unwrap();
        packed.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; data.len()];
        decompress(Codec::Zlib, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        assert!(
            decompress(Codec::Deflate, &packed, &mut out).is_err(),
            "zlib header taken as raw deflate"
        );
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 1).unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn zstd_round_trip_with_padding() {
        let data = sample(65536);
        let mut packed = zstd(&data);
        packed.extend_from_slice(&[0u8; 300]); // sector padding after the frame
        let mut out = vec![0u8; data.len()];
        decompress(Codec::Zstd, &packed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_cluster_split_over_frames_and_skippable_frames() {
        let data = sample(65536);
        let mut packed = zstd(&data[..10000]);
        // A skippable frame (magic 0x184D2A5?, 4-byte length) between the two.
        packed.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        packed.extend_from_slice(&5u32.to_le_bytes());
        packed.extend_from_slice(&[9u8; 5]);
        packed.extend_from_slice(&zstd(&data[10000..]));
        packed.extend_from_slice(&[0xAAu8; 100]);
        let mut out = vec![0u8; data.len()];
        decompress(Codec::Zstd, &packed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_frame_larger_than_the_cluster_is_corrupt() {
        let packed = zstd(&sample(8192));
        let mut out = vec![0u8; 4096];
        let err = decompress(Codec::Zstd, &packed, &mut out).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn zstd_frame_without_content_size_larger_than_the_cluster_is_corrupt() {
        // Hand-made frame: no content size, 1 MiB window, a 128 KiB RLE block repeated
        // 100 times: 12.5 MiB of output from 500 bytes, into a 64 KiB cluster.
        let mut packed = 0xFD2F_B528u32.to_le_bytes().to_vec();
        packed.extend_from_slice(&[0x00, 10 << 3]);
        for i in 0..100 {
            let last = u32::from(i == 99);
            let header = last | (1 << 1) | ((128 << 10) << 3); // RLE block
            packed.extend_from_slice(&header.to_le_bytes()[..3]);
            packed.push(0x5a);
        }
        let mut out = vec![0u8; 65536];
        let err = decompress(Codec::Zstd, &packed, &mut out).unwrap_err();
        assert!(
            err.to_string().contains("more than the 65536-byte"),
            "{err}"
        );
    }

    #[test]
    fn zstd_huge_window_or_content_size_is_refused_before_decoding() {
        // Window descriptor 0xF8: 2^(10+31) bytes.
        let mut packed = 0xFD2F_B528u32.to_le_bytes().to_vec();
        packed.extend_from_slice(&[0x00, 0xf8, 0, 0, 0]);
        let mut out = vec![0u8; 4096];
        let err = decompress(Codec::Zstd, &packed, &mut out).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
        // Single segment, 8-byte content size of 2^40.
        let mut packed = 0xFD2F_B528u32.to_le_bytes().to_vec();
        packed.push(0xe0);
        packed.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decompress(Codec::Zstd, &packed, &mut out).unwrap_err();
        assert!(
            err.to_string().contains("declares 1099511627776 bytes"),
            "{err}"
        );
    }

    #[test]
    fn zstd_short_truncated_or_garbage_is_corrupt() {
        let data = sample(65536);
        let packed = zstd(&data);
        let mut out = vec![0u8; 65536 + 4096];
        let err = decompress(Codec::Zstd, &packed, &mut out).unwrap_err();
        assert!(err.to_string().contains("ends after 65536"), "{err}");
        let mut out = vec![0u8; 65536];
        for cut in [0, 3, 5, 7, packed.len() / 2, packed.len() - 1] {
            assert!(
                decompress(Codec::Zstd, &packed[..cut], &mut out).is_err(),
                "cut {cut}"
            );
        }
        assert!(decompress(Codec::Zstd, &[0xff; 64], &mut out).is_err());
        let mut bad = packed.clone();
        for b in bad.iter_mut().skip(20).step_by(7) {
            *b ^= 0x5a;
        }
        let _ = decompress(Codec::Zstd, &bad, &mut out); // any result, no panic
    }

    #[test]
    fn compressed_clusters_round_trip_and_incompressible_ones_are_refused() {
        let data = sample(65536);
        for codec in [Codec::Deflate, Codec::Zstd] {
            let packed = compress(codec, &data, 65535).expect("compresses");
            let mut out = vec![0u8; data.len()];
            decompress(codec, &packed, &mut out).unwrap();
            assert_eq!(out, data, "{codec:?}");
            let mut noise = vec![0u8; 65536];
            let mut x = 0x1234_5678_9abc_def0u64;
            for b in &mut noise {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            assert!(compress(codec, &noise, 65535).is_none(), "{codec:?}");
        }
    }

    #[test]
    fn deflate_matches_stay_within_qemus_4k_window() {
        // A 4 KiB+ repeat distance: with a 32 KiB window the encoder would reference it.
        let block = sample(6000);
        let data: Vec<u8> = block.iter().chain(block.iter()).copied().collect();
        let packed = compress(Codec::Deflate, &data, data.len()).expect("compresses");
        let mut state = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = vec![0u8; data.len()];
        state
            .decompress(&packed, &mut out, flate2::FlushDecompress::Finish)
            .expect("inflates with a 4 KiB window");
        assert_eq!(out, data);
    }

    #[test]
    fn garbage_is_corrupt_not_panic() {
        let mut out = vec![0u8; 4096];
        assert!(decompress(Codec::Deflate, &[0xff; 64], &mut out).is_err());
    }

    #[test]
    fn a_prefix_decodes_as_the_start_of_the_whole_and_no_further() {
        let data = sample(65536);
        let mut deflated = deflate(&data);
        deflated.extend_from_slice(&[0xAA; 300]);
        let mut zlibbed = {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&data).unwrap();
            enc.finish().unwrap()
        };
        zlibbed.extend_from_slice(&[0x55; 100]);
        let mut zstded = zstd(&data[..30000]);
        zstded.extend_from_slice(&zstd(&data[30000..]));
        for (codec, packed) in [
            (Codec::Deflate, &deflated),
            (Codec::Zlib, &zlibbed),
            (Codec::Zstd, &zstded),
        ] {
            for len in [1, 4096, 29_999, 30_000, 30_001, 65535, 65536] {
                let mut out = vec![0u8; len];
                decompress_prefix(codec, packed, &mut out, data.len()).unwrap();
                assert_eq!(out, data[..len], "{codec:?}, {len} bytes");
            }
            // The stream holds less than the prefix asks for: corrupt, also in part.
            let short = match codec {
                Codec::Zstd => zstd(&data[..1000]),
                Codec::Deflate => deflate(&data[..1000]),
                Codec::Zlib => continue,
            };
            let mut out = vec![0u8; 4096];
            let err = decompress_prefix(codec, &short, &mut out, data.len()).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::error::ErrorKind::Corrupt,
                "{codec:?}: {err}"
            );
        }
    }

    /// The zstd decoder is kept per thread: a call that failed in the middle of a frame
    /// must not leave it there for the next.
    #[test]
    fn the_reused_zstd_decoder_recovers_from_a_corrupt_frame() {
        let data = sample(65536);
        let packed = zstd(&data);
        let mut torn = packed[..packed.len() / 2].to_vec();
        torn.extend_from_slice(&[0xFF; 64]);
        let mut out = vec![0u8; data.len()];
        assert!(decompress(Codec::Zstd, &torn, &mut out).is_err());
        decompress(Codec::Zstd, &packed, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
