//! CPU work on a request's bytes (decrypting a LUKS read) off the queue thread.
//!
//! A queue thread serves every tag of its queue: while it decrypts a 1 MiB read, the
//! other tags' requests wait, completions pile up and no new I/O is submitted. So a task
//! hands such work to a small pool of worker threads shared by every queue of the daemon
//! ([`transform`]) and awaits it like any other I/O of its ring: each job has an eventfd,
//! the task has an io_uring `POLL_ADD` for it pending on the queue's ring, and the worker
//! signals the eventfd when it is done. The queue thread goes on with the other tags in
//! the meantime, and a large read is cut into pieces that several workers transform at
//! once (dm-crypt's kcryptd does the same).
//!
//! Small pieces (up to [`INLINE_MAX`]) are transformed on the queue thread: the hop to a
//! worker and back (an eventfd, a poll, two thread wake-ups) costs more than decrypting a
//! few KiB.
//!
//! The job borrows the request's bytes. The task awaits it, and if the task is dropped
//! before the job has finished (a queue torn down mid-request), the waiting future's
//! destructor blocks until the worker is done with them, so the worker never writes
//! memory that was freed (`Pending`).

use super::data::submit;
use crate::error::{Error, Result};
use crate::image::TransformRead;
use io_uring::{opcode, types};
use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Pieces of at most this many bytes are transformed on the queue thread.
pub const INLINE_MAX: usize = 16 << 10;
/// A request is cut into at most one piece per worker, each at least this long.
const MIN_PIECE: usize = 64 << 10;
/// Most worker threads in the pool (fewer on a host with fewer CPUs).
const MAX_WORKERS: usize = 4;
/// Most spare buffers a queue keeps ([`Spares`]).
const MAX_SPARES: usize = 4;

/// A job for a worker: runs the work and signals its completion.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The worker threads, started on first use and kept for the life of the process.
struct Pool {
    jobs: Sender<Job>,
    workers: usize,
}

/// The daemon's pool, or `None` if no worker thread could be started (then everything
/// is transformed inline).
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let wanted = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..wanted)
            .filter(|i| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("imgblk-xform{i}"))
                    .spawn(move || work(&queue))
                    .is_ok()
            })
            .count();
        (workers > 0).then_some(Pool { jobs, workers })
    })
    .as_ref()
}

/// A worker's loop: runs jobs until the pool's sender goes away (never, in practice).
fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Where a job's result goes, shared by the worker and the waiting task.
struct Completion<T> {
    state: Mutex<State<T>>,
    finished: Condvar,
    /// Signalled by the worker once the result is in `state`. Owned here, so that it stays
    /// open while the worker still writes it, whoever drops the completion last.
    event: OwnedFd,
}

enum State<T> {
    Running,
    /// The work's result, or its panic.
    Done(std::thread::Result<T>),
    Taken,
}

impl<T> Completion<T> {
    /// Blocks until the worker has finished (at once, if it has) and takes the result;
    /// `None` if it was taken already.
    fn wait(&self) -> Option<std::thread::Result<T>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*state, State::Running) {
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(result) => Some(result),
            _ => None,
        }
    }
}

/// A job handed to the pool, from the waiting side. Dropping it waits for the worker (see
/// [`run`]'s safety contract).
struct Pending<T> {
    done: Arc<Completion<T>>,
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        // The job borrows memory of the task that awaited it: until the worker is done,
        // that memory must stay. A no-op once the result was taken.
        let _ = self.done.wait();
    }
}

/// Runs `work` on a worker thread and awaits its result without blocking the queue
/// thread (see the module doc); runs it inline when there is no pool or no eventfd.
/// A panic in `work` is raised again here, in the task, as if it had run inline.
///
/// # Safety
///
/// `work` may borrow (`'a`) memory that the returned future does not own. The future
/// makes sure the worker is done with it before it returns or is dropped, but it cannot
/// if it is leaked: the caller must poll it to completion or drop it, never
/// `std::mem::forget` it (a task that awaits it in place satisfies this).
async unsafe fn run<'a, T: Send + 'static>(work: impl FnOnce() -> T + Send + 'a) -> T {
    let Some(pool) = pool() else {
        return work();
    };
    // SAFETY: eventfd has no memory preconditions; its result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return work();
    }
    let done = Arc::new(Completion {
        state: Mutex::new(State::Running),
        finished: Condvar::new(),
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        event: unsafe { OwnedFd::from_raw_fd(fd) },
    });
    let job: Box<dyn FnOnce() + Send + 'a> = {
        let done = done.clone();
        Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            // `work`, and with it every borrow it held, is gone: from here on the
            // worker touches only the completion, which it co-owns.
            *done.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Done(result);
            done.finished.notify_all();
            let one = 1u64;
            // SAFETY: writes 8 bytes from `one` to the eventfd, open while `done` lives.
            unsafe {
                libc::write(
                    done.event.as_raw_fd(),
                    (&raw const one).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        })
    };
    // SAFETY: only the lifetime is changed. The job's borrows last as long as this
    // future: `pending` (created before the job is sent, dropped at the latest with the
    // future) waits in its destructor until the worker has run the job, and the caller
    // does not leak the future (this function's contract).
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
    let pending = Pending { done };
    if let Err(std::sync::mpsc::SendError(job)) = pool.jobs.send(job) {
        job();
    }
    // Completes once the worker has signalled (at once if it already has: eventfd polls
    // are level-triggered); on any failure of the ring, `wait` below blocks instead.
    let poll = opcode::PollAdd::new(
        types::Fd(pending.done.event.as_raw_fd()),
        libc::POLLIN as u32,
    )
    .build();
    let _ = submit(poll).await;
    match pending.done.wait() {
        Some(Ok(value)) => value,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => unreachable!("a job's result is taken once"),
    }
}

/// Transforms `buf`, the stored bytes of `layer`'s `offset..offset + buf.len()` (whole
/// units of `unit` bytes, as [`TransformRead::map_stored`] said), in place: inline when it
/// is small, else cut into whole units, one piece per worker, transformed by the pool at
/// once.
///
/// # Safety
///
/// As for `run`, which it calls: poll the returned future to completion or drop it,
/// never leak it (the workers may still be writing `buf` when it is dropped, and its drop
/// waits for them).
pub async unsafe fn transform(
    layer: &dyn TransformRead,
    offset: u64,
    unit: u64,
    buf: &mut [u8],
) -> Result<()> {
    let workers = pool().map_or(1, |pool| pool.workers);
    if buf.len() <= INLINE_MAX {
        return layer.transform_in_place(offset, buf);
    }
    let unit = usize::try_from(unit)
        .ok()
        .filter(|&unit| unit > 0 && buf.len() % unit == 0)
        .ok_or_else(|| Error::invalid("transformed range is not whole units"))?;
    let pieces = buf.len().div_ceil(MIN_PIECE).clamp(1, workers);
    let piece = (buf.len() / pieces).div_ceil(unit) * unit;
    let jobs = buf.chunks_mut(piece).enumerate().map(|(i, chunk)| {
        let at = offset + (i * piece) as u64;
        // SAFETY: every future is awaited by join_all below, which this function's caller
        // polls to completion or drops (its contract).
        unsafe { run(move || layer.transform_in_place(at, chunk)) }
    });
    futures::future::join_all(jobs).await.into_iter().collect()
}

/// Buffers a queue lends its requests for bytes that must pass through daemon memory
/// across an await (the ciphertext of a zero-copy read, which the daemon cannot decrypt
/// in the request's pages). A request takes one ([`Spares::take`]) and owns it until it
/// gives it back; at most [`MAX_SPARES`] are kept between requests.
#[derive(Default)]
pub struct Spares(RefCell<Vec<Vec<u8>>>);

impl Spares {
    /// A buffer of `len` bytes (their contents are left over from an earlier request).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.borrow_mut().pop().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Returns a buffer from [`Spares::take`] for a later request.
    pub fn give(&self, buf: Vec<u8>) {
        let mut spares = self.0.borrow_mut();
        if spares.len() < MAX_SPARES {
            spares.push(buf);
        }
    }
}
