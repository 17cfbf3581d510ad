//! Decompression of compressed clusters, shared by the library and the ublk queues.

use super::Codec;
use crate::error::{Error, Result};

/// Decompresses `input` into exactly `out.len()` bytes (one cluster). A stream that ends
/// early or does not decode is an error: a cluster is never half-filled silently.
pub fn decompress(codec: Codec, input: &[u8], out: &mut [u8]) -> Result<()> {
    match codec {
        Codec::Deflate => inflate(input, out, false),
        Codec::Zlib => inflate(input, out, true),
        Codec::Zstd => Err(Error::unsupported(
            "zstd-compressed clusters are not supported yet",
        )),
    }
}

/// Inflates a deflate stream, raw or inside a zlib wrapper (`zlib_header`). Bytes after
/// the end of the stream are ignored: callers read an upper bound of the stored length.
fn inflate(input: &[u8], out: &mut [u8], zlib_header: bool) -> Result<()> {
    let mut state = flate2::Decompress::new(zlib_header);
    state
        .decompress(input, out, flate2::FlushDecompress::Finish)
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

    #[test]
    fn garbage_is_corrupt_not_panic() {
        let mut out = vec![0u8; 4096];
        assert!(decompress(Codec::Deflate, &[0xff; 64], &mut out).is_err());
    }
}
