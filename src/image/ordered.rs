//! A pool of worker threads that applies one function to a stream of items and hands the
//! results back in the order the items went in: `convert -c` compresses clusters on every
//! core while the caller reads the next ones and writes the finished ones in guest order.
//!
//! Memory is bounded: at most [`OrderedPool::window`] items are in the pool (queued, being
//! worked on, or done but waiting for an earlier one); [`OrderedPool::submit`] blocks
//! while the pool is full.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Worker threads applying `F: Fn(In) -> Out` to items, results in submission order.
pub struct OrderedPool<In, Out> {
    jobs: Option<SyncSender<(u64, In)>>,
    results: Receiver<(u64, Out)>,
    workers: Vec<JoinHandle<()>>,
    /// Sequence number of the next item submitted.
    next_in: u64,
    /// Sequence number of the next result handed out.
    next_out: u64,
    /// Results that arrived before an earlier one.
    waiting: BTreeMap<u64, Out>,
    window: u64,
}

impl<In: Send + 'static, Out: Send + 'static> OrderedPool<In, Out> {
    /// Starts `threads` workers (at least one) running `work`.
    pub fn new<F>(threads: usize, work: F) -> Self
    where
        F: Fn(In) -> Out + Send + Sync + 'static,
    {
        let threads = threads.max(1);
        let window = 2 * threads as u64;
        let (jobs, queue) = sync_channel::<(u64, In)>(window as usize);
        let (done, results) = sync_channel::<(u64, Out)>(window as usize);
        let queue = Arc::new(Mutex::new(queue));
        let work = Arc::new(work);
        let workers = (0..threads)
            .map(|_| {
                let (queue, done, work) = (queue.clone(), done.clone(), work.clone());
                std::thread::spawn(move || loop {
                    // The lock is held only to take an item, not while working on it.
                    let next = queue.lock().map(|q| q.recv());
                    let Ok(Ok((seq, item))) = next else { return };
                    if done.send((seq, work(item))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        OrderedPool {
            jobs: Some(jobs),
            results,
            workers,
            next_in: 0,
            next_out: 0,
            waiting: BTreeMap::new(),
            window,
        }
    }

    /// How many items the pool holds at most.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Hands `item` to the workers, first waiting (and passing results that are ready in
    /// order to `ready`) while the pool is full.
    pub fn submit(&mut self, item: In, mut ready: impl FnMut(Out) -> Result<()>) -> Result<()> {
        while self.next_in - self.next_out >= self.window {
            self.wait_one(&mut ready)?;
        }
        let jobs = self.jobs.as_ref().ok_or_else(lost)?;
        jobs.send((self.next_in, item)).map_err(|_| lost())?;
        self.next_in += 1;
        // Pass on whatever is already done, without waiting.
        while let Ok((seq, out)) = self.results.try_recv() {
            self.waiting.insert(seq, out);
        }
        self.pass_on(&mut ready)
    }

    /// Waits for every item submitted, passing the results to `ready` in order, and stops
    /// the workers.
    pub fn finish(mut self, mut ready: impl FnMut(Out) -> Result<()>) -> Result<()> {
        self.jobs = None;
        while self.next_out < self.next_in {
            self.wait_one(&mut ready)?;
        }
        for worker in self.workers.drain(..) {
            worker.join().map_err(|_| lost())?;
        }
        Ok(())
    }

    fn wait_one(&mut self, ready: &mut impl FnMut(Out) -> Result<()>) -> Result<()> {
        let (seq, out) = self.results.recv().map_err(|_| lost())?;
        self.waiting.insert(seq, out);
        self.pass_on(ready)
    }

    fn pass_on(&mut self, ready: &mut impl FnMut(Out) -> Result<()>) -> Result<()> {
        while let Some(out) = self.waiting.remove(&self.next_out) {
            self.next_out += 1;
            ready(out)?;
        }
        Ok(())
    }
}

impl<In, Out> Drop for OrderedPool<In, Out> {
    fn drop(&mut self) {
        // Closing the queue ends the workers once they see it; results nobody reads make
        // the ones blocked on a full result channel stop too, when it is dropped.
        self.jobs = None;
    }
}

fn lost() -> Error {
    Error::invalid("a worker thread stopped unexpectedly (it panicked)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order() {
        let mut pool = OrderedPool::new(3, |n: u64| {
            // Later items finish first.
            std::thread::sleep(std::time::Duration::from_micros(500 - (n % 5) * 100));
            n * 2
        });
        let mut got = Vec::new();
        for n in 0..200 {
            pool.submit(n, |r| {
                got.push(r);
                Ok(())
            })
            .unwrap();
            assert!(n + 1 - got.len() as u64 <= pool.window());
        }
        pool.finish(|r| {
            got.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, (0..200).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_copy() {
        let mut pool = OrderedPool::new(2, |n: u32| n);
        let mut err = None;
        for n in 0..100 {
            if let Err(e) = pool.submit(n, |r| {
                if r == 10 {
                    return Err(Error::invalid("full disk"));
                }
                Ok(())
            }) {
                err = Some(e);
                break;
            }
        }
        assert!(err.is_some());
        drop(pool);
    }
}
