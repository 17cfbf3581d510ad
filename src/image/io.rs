//! Synchronous reads and writes through an image's extent map, with `pread`/`pwrite`.
//! The library path (`cat`, tests, agents without ublk); ublk queues use io_uring instead.

use super::{
    check_range, compress, CompressedCluster, DiskImage, Extent, ImageWrite, Source, WritePlan,
};
use crate::error::{Error, ErrorKind, Result};
use std::sync::Arc;

/// Reads `buf.len()` guest bytes at `offset`.
pub fn read_at<I: DiskImage + ?Sized>(image: &I, buf: &mut [u8], offset: u64) -> Result<()> {
    check_range(offset, buf.len() as u64, image.virtual_size())?;
    let mut extents = Vec::new();
    image.map(offset, buf.len() as u64, &mut extents)?;
    fill_from_extents(&extents, buf)
}

/// Fills `buf` from `extents`, which together cover exactly `buf.len()` bytes.
pub fn fill_from_extents(extents: &[Extent<'_>], buf: &mut [u8]) -> Result<()> {
    let mut pos = 0usize;
    for extent in extents {
        let len = usize::try_from(extent.len)
            .ok()
            .filter(|l| pos + l <= buf.len())
            .ok_or_else(|| Error::corrupt("extent map overruns the request"))?;
        let out = &mut buf[pos..pos + len];
        match extent.source {
            Source::Data { file, offset } => file.read_zero_padded(out, offset)?,
            Source::Zero | Source::Unallocated => out.fill(0),
            Source::Compressed(cluster) => read_compressed(&cluster, out)?,
            Source::Transformed { layer, offset } => layer.read_transformed(offset, out)?,
        }
        pos += len;
    }
    if pos != buf.len() {
        return Err(Error::corrupt("extent map does not cover the request"));
    }
    Ok(())
}

/// Reads and decompresses one cluster (unless the file's cache of decoded clusters has
/// the part wanted), copying the wanted part into `out`. A read of the whole cluster (a
/// copy of the image streaming through it) is decoded straight into `out` and not kept:
/// nobody is about to ask for a part of it.
pub fn read_compressed(cluster: &CompressedCluster<'_>, out: &mut [u8]) -> Result<()> {
    let decoded = match lookup_decoded(cluster, out.len()) {
        Decoded::Cached(decoded) => decoded,
        Decoded::Missing { decode_len } => {
            let mut stored = stored_buffer(cluster);
            cluster.file.read_zero_padded(&mut stored, cluster.offset)?;
            if cluster.skip == 0 && out.len() == cluster.cluster_size as usize {
                return compress::decompress(cluster.codec, &stored, out)
                    .map_err(|e| e.at(cluster.offset).with_path(cluster.file.path()));
            }
            decode(cluster, &stored, decode_len)?
        }
    };
    out.copy_from_slice(part_of(cluster, &decoded, out.len())?);
    Ok(())
}

/// What the cache of decoded clusters holds for a read of `len` bytes of a compressed
/// extent ([`lookup_decoded`]).
pub enum Decoded {
    /// The cluster's decoded bytes, at least as far as the read reaches.
    Cached(Arc<[u8]>),
    /// Not enough: decode the cluster's first `decode_len` bytes ([`decode`]).
    Missing {
        /// How far to decode.
        decode_len: usize,
    },
}

/// Looks up the decoded bytes a read of `len` bytes of `cluster`'s extent needs. A cluster
/// read for the first time is decoded only up to the end of the read (a random 4 KiB
/// read of a 64 KiB cluster then inflates half of it on average, where it used to
/// inflate all of it); one whose cached part falls short is being read in pieces, and is
/// decoded whole.
pub fn lookup_decoded(cluster: &CompressedCluster<'_>, len: usize) -> Decoded {
    let end = cluster.skip as usize + len;
    match cluster.file.decoded_clusters().get(cluster.offset) {
        Some(decoded) if decoded.len() >= end => Decoded::Cached(decoded),
        Some(_) => Decoded::Missing {
            decode_len: cluster.cluster_size as usize,
        },
        None => Decoded::Missing { decode_len: end },
    }
}

/// A buffer for the stored bytes of a compressed cluster (its size bounded by
/// [`CompressedCluster::new`]), to read them into.
pub fn stored_buffer(cluster: &CompressedCluster<'_>) -> Vec<u8> {
    vec![0u8; cluster.stored_len as usize]
}

/// Decompresses the first `decode_len` bytes of a cluster from its `stored` bytes, however
/// they were read, and keeps them in the file's cache of decoded clusters for the next
/// read of the same cluster.
pub fn decode(
    cluster: &CompressedCluster<'_>,
    stored: &[u8],
    decode_len: usize,
) -> Result<Arc<[u8]>> {
    let whole = cluster.cluster_size as usize;
    let mut decoded = vec![0u8; decode_len.min(whole)];
    compress::decompress_prefix(cluster.codec, stored, &mut decoded, whole)
        .map_err(|e| e.at(cluster.offset).with_path(cluster.file.path()))?;
    let decoded: Arc<[u8]> = decoded.into();
    cluster
        .file
        .decoded_clusters()
        .insert(cluster.offset, decoded.clone());
    Ok(decoded)
}

/// The `len` bytes of the decompressed cluster `decoded` that the extent refers to.
pub fn part_of<'d>(
    cluster: &CompressedCluster<'_>,
    decoded: &'d [u8],
    len: usize,
) -> Result<&'d [u8]> {
    let start = cluster.skip as usize;
    decoded
        .get(start..start + len)
        .ok_or_else(|| Error::corrupt("compressed extent lies outside its cluster"))
}

/// Writes `buf` as guest bytes at `offset`.
pub fn write_at<I: DiskImage + ?Sized>(image: &I, buf: &[u8], offset: u64) -> Result<()> {
    check_range(offset, buf.len() as u64, image.virtual_size())?;
    let writer = writer_of(image)?;
    let mut extents = Vec::new();
    if writer.map_write(offset, buf.len() as u64, &mut extents)? == WritePlan::Synchronous {
        return writer.write_sync(offset, buf);
    }
    let mut pos = 0usize;
    for extent in &extents {
        let len = extent.len as usize;
        let Source::Data { file, offset } = extent.source else {
            return Err(Error::corrupt("write mapping returned a non-data extent"));
        };
        let part = buf
            .get(pos..pos + len)
            .ok_or_else(|| Error::corrupt("write mapping overruns the request"))?;
        file.write_all_at(part, offset)?;
        pos += len;
    }
    Ok(())
}

/// The write side of `image`, or the error for an image open read-only, naming its file.
pub fn writer_of<I: DiskImage + ?Sized>(image: &I) -> Result<&dyn ImageWrite> {
    image.writer().ok_or_else(|| {
        let error = Error::new(
            ErrorKind::ReadOnly,
            format!("{} image is open read-only", image.format()),
        );
        match image.chain().first() {
            Some(top) => error.with_path(&top.path),
            None => error,
        }
    })
}

/// Makes what was written to `image` durable; nothing to do when it is open read-only
/// (a FLUSH reaches read-only devices too).
pub fn flush<I: DiskImage + ?Sized>(image: &I) -> Result<()> {
    image.writer().map_or(Ok(()), ImageWrite::flush)
}

/// Zeroes a range by writing zero buffers: the fallback for formats without a cheaper way.
pub fn write_zeroes_by_writing<I: DiskImage + ?Sized>(
    image: &I,
    offset: u64,
    len: u64,
) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        write_at(image, &zeroes[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}
