//! One ublk queue: a thread with its own io_uring, one async task per tag. Each task maps
//! its request through the shared [`DiskImage`] (no lock on the read path) and carries the
//! extents out as io_uring reads and writes on the queue's ring — the same ring that
//! carries the ublk commands, so there is no thread hop per request.

use crate::error::{Error, Result};
use crate::image::io::{copy_from_cluster, decode_buffers};
use crate::image::{compress, CompressedCluster, DiskImage, Extent, ImageFile, Source, WritePlan};
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{sys, BufDesc, UblkError, UblkUringData};
use std::rc::Rc;
use std::sync::Arc;

/// Runs queue `qid` of `dev` until the device stops: the body of each queue thread.
pub fn run_queue(qid: u16, dev: &UblkDev, image: Arc<dyn DiskImage>) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "cannot set up ublk queue");
            return;
        }
    };
    let executor = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = (0..dev.dev_info.queue_depth)
        .map(|tag| {
            let queue = queue.clone();
            let image = image.clone();
            executor.spawn(async move {
                match serve_tag(&queue, tag, &*image).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!(queue = qid, tag, error = %e, "I/O task failed"),
                }
            })
        })
        .collect();
    let ticker = executor.clone();
    smol::block_on(executor.run(async move {
        let run_ops = || while ticker.try_tick() {};
        let done = || tasks.iter().all(|task| task.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&queue, Some(20), run_ops, done).await {
            tracing::error!(queue = qid, error = %e, "queue event loop failed");
        }
    }));
    tracing::debug!(queue = qid, "queue stopped");
}

/// Fetches, serves and commits requests for one tag until the queue goes down.
async fn serve_tag(
    queue: &UblkQueue<'_>,
    tag: u16,
    image: &dyn DiskImage,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    let mut extents = Vec::with_capacity(16);
    loop {
        let iod = queue.get_iod(tag);
        let request = Request {
            op: iod.op_flags & 0xff,
            offset: iod.start_sector << 9,
            len: u64::from(iod.nr_sectors) << 9,
        };
        extents.clear();
        let result = match serve(image, &request, buf.as_mut_slice(), &mut extents).await {
            Ok(()) => request.len as i32,
            Err(e) => {
                tracing::warn!(queue = queue.get_qid(), op = request.op, offset = request.offset,
                    len = request.len, error = %e, "request failed");
                -e.kind().errno()
            }
        };
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// One block request as the kernel sent it, in bytes.
#[derive(Debug, Clone, Copy)]
struct Request {
    op: u32,
    offset: u64,
    len: u64,
}

/// Carries out one request.
async fn serve<'a>(
    image: &'a dyn DiskImage,
    req: &Request,
    buf: &mut [u8],
    extents: &mut Vec<Extent<'a>>,
) -> Result<()> {
    match req.op {
        sys::UBLK_IO_OP_READ => {
            let buf = request_buffer(buf, req.len)?;
            image.map(req.offset, req.len, extents)?;
            read_extents(extents, buf).await
        }
        sys::UBLK_IO_OP_WRITE => {
            let buf = request_buffer(buf, req.len)?;
            match image.map_write(req.offset, req.len, extents)? {
                WritePlan::Mapped => write_extents(extents, buf).await,
                WritePlan::Synchronous => image.write_sync(req.offset, buf),
            }
        }
        sys::UBLK_IO_OP_FLUSH => image.flush(),
        sys::UBLK_IO_OP_DISCARD => image.discard(req.offset, req.len),
        sys::UBLK_IO_OP_WRITE_ZEROES => image.write_zeroes(req.offset, req.len),
        op => Err(Error::unsupported(format!("ublk operation {op}"))),
    }
}

fn request_buffer(buf: &mut [u8], len: u64) -> Result<&mut [u8]> {
    usize::try_from(len)
        .ok()
        .and_then(|len| buf.get_mut(..len))
        .ok_or_else(|| Error::invalid(format!("request of {len} bytes exceeds the I/O buffer")))
}

/// The file and offset of a mapping that is one run of data `len` bytes long.
fn single_data_run<'a>(extents: &[Extent<'a>], len: usize) -> Option<(&'a ImageFile, u64)> {
    match extents {
        [Extent {
            len: run,
            source: Source::Data { file, offset },
            ..
        }] if *run == len as u64 => Some((*file, *offset)),
        _ => None,
    }
}

/// Reads every extent into its part of `buf`; data reads run concurrently on the ring.
async fn read_extents(extents: &[Extent<'_>], buf: &mut [u8]) -> Result<()> {
    // The common request, one run of data: no allocation, no join.
    if let Some((file, offset)) = single_data_run(extents, buf.len()) {
        return read_fully(file, offset, buf).await;
    }
    let mut reads = Vec::with_capacity(extents.len());
    let mut compressed = Vec::new();
    let mut rest = buf;
    for extent in extents {
        let len = usize::try_from(extent.len)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| Error::corrupt("extent map overruns the request"))?;
        let (part, tail) = rest.split_at_mut(len);
        rest = tail;
        match extent.source {
            Source::Data { file, offset } => reads.push(read_fully(file, offset, part)),
            Source::Zero | Source::Unallocated => part.fill(0),
            Source::Compressed(cluster) => compressed.push((cluster, part)),
            Source::Transformed { layer, offset } => layer.read_transformed(offset, part)?,
        }
    }
    for result in futures::future::join_all(reads).await {
        result?;
    }
    for (cluster, part) in compressed {
        read_compressed(&cluster, part).await?;
    }
    Ok(())
}

/// Writes `buf` through the `Data` extents of a write mapping, concurrently.
async fn write_extents(extents: &[Extent<'_>], buf: &[u8]) -> Result<()> {
    if let Some((file, offset)) = single_data_run(extents, buf.len()) {
        return write_fully(file, offset, buf).await;
    }
    let mut writes = Vec::with_capacity(extents.len());
    let mut rest = buf;
    for extent in extents {
        let Source::Data { file, offset } = extent.source else {
            return Err(Error::corrupt("write mapping returned a non-data extent"));
        };
        let len = usize::try_from(extent.len)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| Error::corrupt("write mapping overruns the request"))?;
        let (part, tail) = rest.split_at(len);
        rest = tail;
        writes.push(write_fully(file, offset, part));
    }
    for result in futures::future::join_all(writes).await {
        result?;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset`, resubmitting after short reads; bytes past the end
/// of the file read as zero (a backing file may be shorter than the disk).
async fn read_fully(file: &ImageFile, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let part = &mut buf[done..];
        let chunk = part.len().min(1 << 30) as u32;
        let fd = file.data_fd(pos, u64::from(chunk), part.as_ptr() as usize);
        let sqe = opcode::Read::new(types::Fd(fd), part.as_mut_ptr(), chunk)
            .offset(pos)
            .build();
        match submit(sqe).await {
            0 => {
                part.fill(0);
                break;
            }
            n if n > 0 => done += n as usize,
            e if e == -libc::EINTR || e == -libc::EAGAIN => {}
            e => {
                return Err(
                    Error::io("read failed", std::io::Error::from_raw_os_error(-e))
                        .at(pos)
                        .with_path(file.path()),
                )
            }
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`, resubmitting after short writes.
async fn write_fully(file: &ImageFile, offset: u64, buf: &[u8]) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let part = &buf[done..];
        let chunk = part.len().min(1 << 30) as u32;
        let fd = file.data_fd(pos, u64::from(chunk), part.as_ptr() as usize);
        let sqe = opcode::Write::new(types::Fd(fd), part.as_ptr(), chunk)
            .offset(pos)
            .build();
        match submit(sqe).await {
            n if n > 0 => done += n as usize,
            e if e == -libc::EINTR || e == -libc::EAGAIN => {}
            0 => {
                return Err(Error::corrupt("write made no progress")
                    .at(pos)
                    .with_path(file.path()))
            }
            e => {
                return Err(
                    Error::io("write failed", std::io::Error::from_raw_os_error(-e))
                        .at(pos)
                        .with_path(file.path()),
                )
            }
        }
    }
    Ok(())
}

/// Reads a compressed cluster on the ring and decompresses the wanted part into `out`.
async fn read_compressed(cluster: &CompressedCluster<'_>, out: &mut [u8]) -> Result<()> {
    let (stored_len, decoded_len) = decode_buffers(cluster);
    let mut stored = vec![0u8; stored_len];
    read_fully(cluster.file, cluster.offset, &mut stored).await?;
    let mut decoded = vec![0u8; decoded_len];
    compress::decompress(cluster.codec, &stored, &mut decoded)
        .map_err(|e| e.at(cluster.offset).with_path(cluster.file.path()))?;
    copy_from_cluster(cluster, &decoded, out)
}

/// Submits one SQE on this queue's ring and waits for its result (negative errno on error).
async fn submit(sqe: io_uring::squeue::Entry) -> i32 {
    ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
        .await
        .unwrap_or(-libc::EIO)
}
