//! Parallel loops for the model's own kernels, run on candle's CPU thread pool: the pool candle's own
//! ops run on, so that a block's matmuls and its elementwise ops take turns on one set of threads instead
//! of keeping two pools spinning on the same cores.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `task(i)` for every `i < n`, spread over candle's pool (the calling thread takes part). Threads take
/// runs of consecutive tasks, each run half of what is left divided among the threads, down to single tasks,
/// so that all finish within about one task of each other: callers size their tasks (at least some
/// microseconds each) so that taking a run costs nothing in comparison.
pub(super) fn for_each_task(n: usize, task: impl Fn(usize) + Sync) {
    let pool = candle_core::utils::barrier_pool();
    let next = AtomicUsize::new(0);
    // One item per thread, each of which takes runs of tasks until none is left. candle runs all items on the
    // calling thread when it is itself one of the pool's workers.
    let threads = pool.n_workers() + 1;
    pool.execute_chunked(threads, |_| loop {
        let mut first = next.load(Ordering::Relaxed);
        let take = loop {
            if first >= n {
                return;
            }
            let take = ((n - first) / (2 * threads)).max(1);
            match next.compare_exchange_weak(first, first + take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break take,
                Err(now) => first = now,
            }
        };
        (first..first + take).for_each(&task);
    });
}

/// Runs `f(i, chunk)` for every `chunk_len`-element chunk of `data` (the last may be shorter), spread over
/// candle's pool.
pub(super) fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk_len > 0, "for_each_chunk_mut: empty chunks");
    let (start, len) = (Disjoint::new(data.as_mut_ptr()), data.len());
    for_each_task(len.div_ceil(chunk_len), |i| {
        let first = i * chunk_len;
        // SAFETY: chunk `i` is `first..first + its length` of `data`, which no other task touches and which
        // outlives this call (it is borrowed mutably for all of it).
        f(i, unsafe { start.part(first, chunk_len.min(len - first)) })
    });
}

/// A buffer that parallel tasks each write their own parts of, shared through a pointer to its start.
pub(super) struct Disjoint<T>(*mut T);

// SAFETY: every task reaches only its own parts ([`Disjoint::part`]'s contract), and `T: Send` lets values be
// written there from any thread.
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// The buffer that starts at `start`.
    pub(super) fn new(start: *mut T) -> Self {
        Disjoint(start)
    }

    /// The buffer's first element.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86-64 kernels write through it
    pub(super) fn start(&self) -> *mut T {
        self.0
    }

    /// Elements `first..first + len` of the buffer.
    ///
    /// SAFETY: they lie within the buffer, which outlives the returned slice, and no other task reaches them
    /// while it lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn part(&self, first: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(first), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_and_every_chunk_runs_once() {
        let hits: Vec<std::sync::atomic::AtomicUsize> = (0..1000).map(|_| Default::default()).collect();
        for_each_task(hits.len(), |i| {
            hits[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(std::sync::atomic::Ordering::Relaxed) == 1));

        let mut data = vec![0usize; 1003];
        for_each_chunk_mut(&mut data, 10, |i, chunk| {
            assert_eq!(chunk.len(), if i == 100 { 3 } else { 10 });
            chunk.iter_mut().enumerate().for_each(|(k, v)| *v += i * 10 + k + 1);
        });
        assert_eq!(data, (1..=1003).collect::<Vec<_>>());
    }
}
