//! One ublk queue: a thread with its own io_uring, one async task per tag. Each task maps
//! its request through the shared [`DiskImage`] (no lock on the read path) and carries the
//! extents out as io_uring reads and writes on the queue's ring — the same ring that
//! carries the ublk commands, so there is no thread hop per request. The bytes move by
//! copy or zero copy, as the device was created ([`super::data`]).

use super::data::{Data, Registered, Scratch};
use super::kernel;
use super::offload::{self, Spares};
use super::ratelimit::{RateLimiter, Verdict};
use crate::error::{Error, Result};
use crate::image::io::{self, decode, lookup_decoded, part_of, stored_buffer, writer_of, Decoded};
use crate::image::{
    CompressedCluster, DiskImage, Extent, ImageFile, Source, TransformRead, WritePlan,
};
use io_uring::squeue;
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::uring_async::{ublk_reap_io_events_with_update_queue, ublk_wake_task};
use libublk::{sys, BufDesc, UblkError, UblkUringData};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many failed requests are logged per queue and [`FAILURE_LOG_INTERVAL`];
/// the others are counted and logged as one line (a guest reading a bad region in a loop
/// would otherwise fill the log, on tmpfs under /run).
const FAILURE_LOG_BURST: u32 = 10;
/// See [`FAILURE_LOG_BURST`].
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Lets a device's daemon stop its queues from completing requests, so that it can
/// flush the image and hand the device over to a successor (ublk USER_RECOVERY) without
/// a completed write depending on state that dies with it: once [`Gate::close`] has
/// returned, every request the queues complete has been carried out on the image, and
/// the others stay with the kernel, which hands them to the next daemon.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    /// Requests being carried out on the image.
    busy: AtomicUsize,
}

impl Gate {
    /// Called as a request arrives: whether to carry it out (the gate is open). When
    /// this returns true, [`Gate::leave`] must follow once the image work is done.
    fn enter(&self) -> bool {
        // Counted before the check, and the closer sets the flag before it reads the
        // count (both SeqCst): either the closer waits for this request, or this
        // request sees the gate closed.
        self.busy.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called when a request admitted by [`Gate::enter`] is done with the image.
    fn leave(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stops admitting requests and waits (up to `timeout`) for those being carried out;
    /// returns whether they all finished.
    pub fn close(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.busy.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// Runs queue `qid` of `dev` until the device stops: the body of each queue thread.
pub fn run_queue(qid: u16, dev: &UblkDev, image: Arc<dyn DiskImage>, gate: Arc<Gate>) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "cannot set up ublk queue");
            return;
        }
    };
    let shared = Rc::new(QueueShared {
        scratch: Scratch::default(),
        spares: Spares::default(),
        link_commits: kernel::links_ublk_commands_safely(&kernel::release()),
        link_results: (0..dev.dev_info.queue_depth)
            .map(|_| Cell::new(None))
            .collect(),
        failures: RefCell::new(RateLimiter::new(FAILURE_LOG_BURST, FAILURE_LOG_INTERVAL)),
    });
    let executor = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = (0..dev.dev_info.queue_depth)
        .map(|tag| {
            let queue = queue.clone();
            let image = image.clone();
            let shared = shared.clone();
            let gate = gate.clone();
            executor.spawn(async move {
                match serve_tag(&queue, tag, &*image, &shared, &gate).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => tracing::error!(queue = qid, tag, error = %e, "I/O task failed"),
                }
            })
        })
        .collect();
    let ticker = executor.clone();
    let failures = shared.clone();
    smol::block_on(executor.run(async move {
        let run_ops = || while ticker.try_tick() {};
        let done = || tasks.iter().all(|task| task.is_finished());
        if let Err(e) = event_loop(&queue, &shared, run_ops, done).await {
            tracing::error!(queue = qid, error = %e, "queue event loop failed");
        }
    }));
    report_suppressed(qid, failures.failures.borrow_mut().take_suppressed());
    tracing::debug!(queue = qid, "queue stopped");
}

/// What the tasks of one queue share.
struct QueueShared {
    /// For bytes that pass through daemon memory in zero-copy mode.
    scratch: Scratch,
    /// For the ciphertext of zero-copy reads of a transformed layer, across awaits.
    spares: Spares,
    /// Whether this kernel lets a commit be linked behind its transfer
    /// ([`kernel::links_ublk_commands_safely`]).
    link_commits: bool,
    /// Per tag, the result of its last linked transfer, which tells why a commit was
    /// cancelled (the transfer failed or fell short).
    link_results: Vec<Cell<Option<i32>>>,
    /// Which failed requests get a log line of their own.
    failures: RefCell<RateLimiter>,
}

impl QueueShared {
    /// Logs that `request` of queue `qid` failed with `error`, within the rate limit.
    fn log_failure(&self, qid: u16, request: &Request, error: &Error) {
        let verdict = self.failures.borrow_mut().check(Instant::now());
        if let Verdict::Log { suppressed } = verdict {
            report_suppressed(qid, suppressed);
            tracing::warn!(queue = qid, op = request.op, offset = request.offset,
                len = request.len, error = %error, "request failed");
        }
    }
}

/// Logs how many failed requests of queue `qid` went unlogged, if any.
fn report_suppressed(qid: u16, suppressed: u64) {
    if suppressed > 0 {
        tracing::warn!(
            queue = qid,
            suppressed,
            "suppressed {suppressed} similar request failures (at most {FAILURE_LOG_BURST} \
             logged per queue every {}s)",
            FAILURE_LOG_INTERVAL.as_secs()
        );
    }
}

/// Marks the `user_data` of a transfer linked to its commit (with the tag in the low
/// bits). [`event_loop`] keeps its result for the task, which looks at it only if the
/// commit was cancelled, instead of waking a future as libublk does for its own.
const LINKED_TRANSFER: u64 = UblkUringData::Target as u64 | 1 << 61;

/// libublk's event loop (submit and wait, reap completions and wake the tasks, run them),
/// with the results of linked transfers set aside for their tags.
async fn event_loop<R: Fn(), D: Fn() -> bool>(
    queue: &UblkQueue<'_>,
    shared: &QueueShared,
    run_ops: R,
    done: D,
) -> Result<(), UblkError> {
    let idle = io_uring::types::Timespec::new().sec(20);
    let wait =
        || async { libublk::uring_poll_io_fn::<io_uring::squeue::Entry>(queue, Some(idle), 1) };
    let reap = |timed_out| {
        ublk_reap_io_events_with_update_queue(queue, timed_out, None, |cqe| {
            let data = cqe.user_data();
            if data & LINKED_TRANSFER == LINKED_TRANSFER {
                if let Some(slot) = shared.link_results.get((data & 0xffff) as usize) {
                    slot.set(Some(cqe.result()));
                }
            } else {
                ublk_wake_task(data, cqe);
            }
        })
    };
    libublk::run_uring_tasks(wait, reap, run_ops, done).await
}

/// Where one tag's requests keep their bytes (see [`super::data`]).
enum TagBuffer {
    /// Copy mode: a buffer of the largest request size in daemon memory.
    Copied(IoBuf<u8>),
    /// Zero copy: the request's own pages, registered as fixed buffer `tag`.
    Registered(Registered),
}

impl TagBuffer {
    fn new(queue: &UblkQueue<'_>, tag: u16) -> Self {
        let dev = queue.dev;
        if queue.support_auto_buf_zc() {
            TagBuffer::Registered(Registered {
                index: tag,
                cdev: dev.tgt.fds[0],
                copy_base: UblkIOCtx::ublk_user_copy_pos(queue.get_qid(), tag, 0),
            })
        } else {
            TagBuffer::Copied(IoBuf::new(dev.dev_info.max_io_buf_bytes as usize))
        }
    }

    /// How the FETCH and COMMIT commands of the tag describe its buffer.
    fn desc(&self) -> BufDesc<'_> {
        match self {
            TagBuffer::Copied(buf) => BufDesc::Slice(buf.as_slice()),
            TagBuffer::Registered(pages) => BufDesc::AutoReg(sys::ublk_auto_buf_reg {
                index: pages.index,
                flags: 0,
                reserved0: 0,
                reserved1: 0,
            }),
        }
    }

    /// The first `len` bytes, for a request of that size.
    fn data(&mut self, len: u64) -> Result<Data<'_>> {
        let too_big = || Error::invalid(format!("request of {len} bytes exceeds the I/O buffer"));
        match self {
            TagBuffer::Copied(buf) => usize::try_from(len)
                .ok()
                .and_then(|len| buf.as_mut_slice().get_mut(..len))
                .map(Data::Memory)
                .ok_or_else(too_big),
            TagBuffer::Registered(pages) => u32::try_from(len)
                .map(|len| Data::pages(*pages, len))
                .map_err(|_| too_big()),
        }
    }
}

/// Fetches, serves and commits requests for one tag until the queue goes down.
async fn serve_tag(
    queue: &UblkQueue<'_>,
    tag: u16,
    image: &dyn DiskImage,
    shared: &QueueShared,
    gate: &Gate,
) -> Result<(), UblkError> {
    let mut buffer = TagBuffer::new(queue, tag);
    let io_buf = match &buffer {
        TagBuffer::Copied(buf) => Some(buf),
        TagBuffer::Registered(_) => None,
    };
    queue
        .submit_io_prep_cmd(tag, buffer.desc(), 0, io_buf)
        .await?;
    let mut extents = Vec::with_capacity(16);
    loop {
        if !gate.enter() {
            // The daemon is handing the device over: the request stays with the kernel,
            // which gives it to the next daemon.
            return std::future::pending().await;
        }
        let iod = queue.get_iod(tag);
        let request = Request {
            op: iod.op_flags & 0xff,
            offset: iod.start_sector << 9,
            len: u64::from(iod.nr_sectors) << 9,
        };
        extents.clear();
        let served = match prepare(image, &request, &mut extents) {
            Ok(Work::Transfer(transfer)) => {
                // Mapping the request settled whatever metadata it needed (a flush now
                // covers it), and its bytes go straight to or from the file, needing
                // nothing of this daemon: the next daemon's flush makes them durable. So
                // the request may leave the gate before the kernel has carried it out.
                gate.leave();
                match transfer_linked(queue, tag, &mut buffer, &request, transfer, shared).await? {
                    LinkOutcome::Committed => continue,
                    LinkOutcome::Broken(result) => {
                        transfer.finish(&mut buffer, &request, result).await
                    }
                    LinkOutcome::Skipped => transfer.finish(&mut buffer, &request, None).await,
                }
            }
            Ok(work) => {
                let done = carry_out(work, image, &request, &mut buffer, &extents, shared).await;
                gate.leave();
                done
            }
            Err(e) => {
                gate.leave();
                Err(e)
            }
        };
        let result = match served {
            Ok(()) => request.len as i32,
            Err(e) => {
                shared.log_failure(queue.get_qid(), &request, &e);
                -e.kind().errno()
            }
        };
        queue
            .submit_io_commit_cmd(tag, buffer.desc(), result)
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

/// What a request needs, once mapped.
enum Work<'a> {
    /// All its bytes move to or from one run of one file: a single SQE.
    Transfer(Transfer<'a>),
    /// Read the mapped extents.
    Read,
    /// Write into the mapped data extents.
    Write,
    /// Hand the write to the image, which allocates or copies on write itself.
    WriteSync,
    /// Nothing more (flush, discard and write-zeroes are done while preparing).
    Done,
}

/// Maps `req` (or, for requests without data, carries it out) and says what is left.
fn prepare<'a>(
    image: &'a dyn DiskImage,
    req: &Request,
    extents: &mut Vec<Extent<'a>>,
) -> Result<Work<'a>> {
    let transfer = |(file, offset): (&'a ImageFile, u64), write| {
        Work::Transfer(Transfer {
            file,
            offset,
            write,
        })
    };
    match req.op {
        sys::UBLK_IO_OP_READ => {
            if let Some(run) = image.data_run(req.offset, req.len)? {
                return Ok(transfer(run, false));
            }
            image.map(req.offset, req.len, extents)?;
            Ok(single_data_run(extents, req.len).map_or(Work::Read, |run| transfer(run, false)))
        }
        sys::UBLK_IO_OP_WRITE => match writer_of(image)?.map_write(req.offset, req.len, extents)? {
            WritePlan::Mapped if extents.iter().any(after_failed_sync) => Err(Error::io(
                "an earlier fdatasync of the image failed: writes are refused until detach",
                std::io::Error::from_raw_os_error(libc::EIO),
            )),
            WritePlan::Mapped => Ok(
                single_data_run(extents, req.len).map_or(Work::Write, |run| transfer(run, true))
            ),
            WritePlan::Synchronous => Ok(Work::WriteSync),
        },
        sys::UBLK_IO_OP_FLUSH => io::flush(image).map(|()| Work::Done),
        sys::UBLK_IO_OP_DISCARD => writer_of(image)?
            .discard(req.offset, req.len)
            .map(|()| Work::Done),
        sys::UBLK_IO_OP_WRITE_ZEROES => writer_of(image)?
            .write_zeroes(req.offset, req.len)
            .map(|()| Work::Done),
        op => Err(Error::unsupported(format!("ublk operation {op}"))),
    }
}

/// Whether `extent` lies in a file whose earlier `fdatasync` failed: a write the queue
/// sends there itself (io_uring, bypassing [`ImageFile::write_all_at`]) must fail too.
fn after_failed_sync(extent: &Extent<'_>) -> bool {
    matches!(extent.source, Source::Data { file, .. } if file.sync_failed())
}

/// Carries out what [`prepare`] left to do.
async fn carry_out(
    work: Work<'_>,
    image: &dyn DiskImage,
    req: &Request,
    buffer: &mut TagBuffer,
    extents: &[Extent<'_>],
    shared: &QueueShared,
) -> Result<()> {
    match work {
        Work::Transfer(transfer) => transfer.finish(buffer, req, None).await,
        Work::Read => read_extents(extents, buffer.data(req.len)?, shared).await,
        Work::Write => write_extents(extents, buffer.data(req.len)?).await,
        Work::WriteSync => buffer.data(req.len)?.with_bytes(&shared.scratch, |bytes| {
            writer_of(image)?.write_sync(req.offset, bytes)
        }),
        Work::Done => Ok(()),
    }
}

/// A request's single transfer ([`Work::Transfer`]).
#[derive(Clone, Copy)]
struct Transfer<'a> {
    file: &'a ImageFile,
    offset: u64,
    write: bool,
}

impl Transfer<'_> {
    /// Moves the bytes from `done` on (all of them for `None`, or a negative `done`:
    /// after a failure the transfer starts over, and reports the error if it recurs).
    async fn finish(self, buffer: &mut TagBuffer, req: &Request, done: Option<i32>) -> Result<()> {
        let data = buffer.data(req.len)?;
        let done = done
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= data.len())
            .unwrap_or(0);
        let (_, rest) = data.split_at(done);
        let offset = self.offset + done as u64;
        if self.write {
            rest.write_to(self.file, offset).await
        } else {
            rest.read_from(self.file, offset).await
        }
    }
}

/// How [`transfer_linked`] went.
enum LinkOutcome {
    /// The transfer moved every byte and the commit went out after it: the next request
    /// of the tag has arrived.
    Committed,
    /// The transfer failed or fell short (after this many bytes or with this -errno, if
    /// known), so the commit was cancelled: finish the request and commit it.
    Broken(Option<i32>),
    /// The kernel cannot link a commit safely, the ring had no room for the pair, or the
    /// queue is stopping: nothing was submitted.
    Skipped,
}

/// Submits a request's transfer and its commit as one linked pair: the kernel commits
/// the request as soon as the transfer completes in full, without waiting for the daemon
/// to see the transfer's completion and submit the commit itself. Only on kernels that
/// copy a linked command's SQE ([`kernel::links_ublk_commands_safely`]).
///
/// (Not with `IOSQE_CQE_SKIP_SUCCESS` on the transfer, which would spare the daemon that
/// completion too: when such a transfer fails, the kernel posts no completion for the
/// cancelled commit either, and the task would wait for it forever.)
async fn transfer_linked(
    queue: &UblkQueue<'_>,
    tag: u16,
    buffer: &mut TagBuffer,
    req: &Request,
    transfer: Transfer<'_>,
    shared: &QueueShared,
) -> Result<LinkOutcome, UblkError> {
    let room = libublk::with_task_io_ring_mut(|ring| {
        let sq = ring.submission();
        sq.capacity() - sq.len() >= 2
    });
    if !shared.link_commits || !room || queue.is_stopping() {
        return Ok(LinkOutcome::Skipped);
    }
    let sqe = match buffer
        .data(req.len)
        .and_then(|data| data.transfer_sqe(transfer.file, transfer.offset, transfer.write))
    {
        Ok(sqe) => sqe,
        Err(_) => return Ok(LinkOutcome::Skipped),
    };
    let sqe = sqe
        .flags(squeue::Flags::IO_LINK)
        .user_data(LINKED_TRANSFER | u64::from(tag));
    let slot = &shared.link_results[usize::from(tag)];
    slot.set(None);
    // Both SQEs are queued before this task yields, so no other task's SQE can come
    // between them, and the room check above keeps libublk from flushing the ring
    // between them (which would cut the link).
    // SAFETY: the SQE points into the request's buffer (or registered pages), which stay
    // valid until the commit completes or is cancelled, and this task awaits that.
    libublk::with_task_io_ring_mut(|ring| unsafe { ring.submission().push(&sqe) })
        .map_err(|_| UblkError::OtherError(-libc::EBUSY))?;
    let mut commit = std::pin::pin!(queue.submit_io_commit_cmd(tag, buffer.desc(), req.len as i32));
    if let std::task::Poll::Ready(fetched) = futures::poll!(commit.as_mut()) {
        return fetched.map(|_| LinkOutcome::Committed);
    }
    match commit.await? {
        res if res == -libc::ECANCELED => Ok(LinkOutcome::Broken(slot.take())),
        _ => Ok(LinkOutcome::Committed),
    }
}

/// The file and offset of a mapping that is one run of data `len` bytes long.
fn single_data_run<'a>(extents: &[Extent<'a>], len: u64) -> Option<(&'a ImageFile, u64)> {
    match extents {
        [Extent {
            len: run,
            source: Source::Data { file, offset },
            ..
        }] if *run == len => Some((*file, *offset)),
        _ => None,
    }
}

/// Splits the next `len` bytes of an extent off `rest`.
fn take<'b>(rest: &mut Option<Data<'b>>, len: u64, what: &str) -> Result<Data<'b>> {
    let data = rest
        .take()
        .ok_or_else(|| Error::corrupt(what.to_string()))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= data.len())
        .ok_or_else(|| Error::corrupt(what.to_string()))?;
    let (part, tail) = data.split_at(len);
    *rest = Some(tail);
    Ok(part)
}

/// Reads every extent into its part of `data`; data reads (and zero fills of registered
/// pages) run concurrently on the ring.
async fn read_extents(extents: &[Extent<'_>], data: Data<'_>, shared: &QueueShared) -> Result<()> {
    let mut reads = Vec::with_capacity(extents.len());
    let mut zeroes = Vec::new();
    let mut compressed = Vec::new();
    let mut transformed = Vec::new();
    let mut rest = Some(data);
    for extent in extents {
        let part = take(&mut rest, extent.len, "extent map overruns the request")?;
        match extent.source {
            Source::Data { file, offset } => reads.push(part.read_from(file, offset)),
            Source::Zero | Source::Unallocated => zeroes.push(part.zero()),
            Source::Compressed(cluster) => compressed.push((cluster, part)),
            Source::Transformed { layer, offset } => transformed.push((layer, offset, part)),
        }
    }
    let (read, zeroed) = futures::future::join(
        futures::future::join_all(reads),
        futures::future::join_all(zeroes),
    )
    .await;
    read.into_iter().chain(zeroed).collect::<Result<()>>()?;
    for (cluster, part) in compressed {
        read_compressed(&cluster, part).await?;
    }
    for (layer, offset, part) in transformed {
        read_transformed(layer, offset, part, shared).await?;
    }
    Ok(())
}

/// Reads `layer`'s bytes from `offset` on into `out`: where the layer stages the read
/// ([`TransformRead::map_stored`]), its stored bytes on the ring, like any other extents,
/// then transformed in place off the queue thread ([`offload::transform`]); else (a range
/// that is not whole units, which only library callers send) synchronously.
async fn read_transformed(
    layer: &dyn TransformRead,
    offset: u64,
    out: Data<'_>,
    shared: &QueueShared,
) -> Result<()> {
    let mut stored = Vec::new();
    let Some(unit) = layer.map_stored(offset, out.len() as u64, &mut stored)? else {
        return out.fill_with(&shared.scratch, |buf| layer.read_transformed(offset, buf));
    };
    // The stored bytes may be transformed again (LUKS in LUKS): a recursion, boxed.
    match out {
        Data::Memory(buf) => {
            Box::pin(read_extents(&stored, Data::Memory(&mut *buf), shared)).await?;
            // SAFETY: awaited in place.
            unsafe { offload::transform(layer, offset, unit, buf) }.await
        }
        pages => {
            // The daemon cannot touch the request's pages: decrypt in a buffer of the
            // request's own (`Scratch` is not to be held across an await), then copy.
            let mut buf = shared.spares.take(pages.len());
            Box::pin(read_extents(&stored, Data::Memory(&mut buf), shared)).await?;
            // SAFETY: awaited in place.
            unsafe { offload::transform(layer, offset, unit, &mut buf) }.await?;
            pages.put(&buf)?;
            shared.spares.give(buf);
            Ok(())
        }
    }
}

/// Writes `data` through the `Data` extents of a write mapping, concurrently.
async fn write_extents(extents: &[Extent<'_>], data: Data<'_>) -> Result<()> {
    let mut writes = Vec::with_capacity(extents.len());
    let mut rest = Some(data);
    for extent in extents {
        let Source::Data { file, offset } = extent.source else {
            return Err(Error::corrupt("write mapping returned a non-data extent"));
        };
        let part = take(&mut rest, extent.len, "write mapping overruns the request")?;
        writes.push(part.write_to(file, offset));
    }
    futures::future::join_all(writes)
        .await
        .into_iter()
        .collect()
}

/// Reads a compressed cluster on the ring (unless the file's cache of decoded clusters
/// has the part wanted) and puts the wanted part of it into `out`.
async fn read_compressed(cluster: &CompressedCluster<'_>, out: Data<'_>) -> Result<()> {
    let len = out.len();
    let decoded = match lookup_decoded(cluster, len) {
        Decoded::Cached(decoded) => decoded,
        Decoded::Missing { decode_len } => {
            let mut stored = stored_buffer(cluster);
            Data::Memory(&mut stored)
                .read_from(cluster.file, cluster.offset)
                .await?;
            decode(cluster, &stored, decode_len)?
        }
    };
    out.put(part_of(cluster, &decoded, len)?)
}
