//! How far a stage's call has come through its block, reported to the driver
//! while the call runs, so that progress moves with rows and not only when a
//! whole block is done.
//!
//! The stage's last `map_batches` step counts: after each slice of
//! `batch_size` rows, and, inside a slice, whatever its function reports with
//! [`BlockProgress::rows_done`] (a model embedding a block batch by batch).
//! The driver scales the fraction done to the block's source rows.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// The progress of the slice being handed to a user function on this thread.
    static CURRENT: RefCell<Option<BlockProgress>> = const { RefCell::new(None) };
}

tokio::task_local! {
    /// The call of a local run (no worker to report through) this task runs.
    static LOCAL_CALL: Arc<LocalCall>;
}

/// How far a local run's call has come, read by the run's progress line.
#[derive(Default)]
pub(crate) struct LocalCall {
    done: AtomicU64,
    total: AtomicU64,
}

impl LocalCall {
    /// The share of `rows` the call has done.
    pub(crate) fn fraction_of(&self, rows: u64) -> u64 {
        let total = self.total.load(Ordering::Relaxed);
        if total == 0 {
            return 0;
        }
        rows * self.done.load(Ordering::Relaxed).min(total) / total
    }
}

/// Runs `call` with its progress reported to `share`.
pub(crate) async fn scope_local<F: Future>(share: Arc<LocalCall>, call: F) -> F::Output {
    LOCAL_CALL.scope(share, call).await
}

/// Where a call's progress goes.
enum Target {
    /// To the driver, through the worker's call.
    Call(photon::TaskProgress),
    /// To a local run in this process.
    Local(Arc<LocalCall>),
}

/// The running call's progress through its block, for a user function to
/// report rows done inside one call:
///
/// ```ignore
/// fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
///     let progress = photon_data::BlockProgress::current();
///     for chunk in chunks(&batch) {
///         work(chunk);
///         progress.rows_done(chunk.num_rows() as u64); // any thread may call it
///     }
///     …
/// }
/// ```
///
/// Outside a pipeline's call (a test, a driver) it reports nowhere.
#[derive(Clone, Default)]
pub struct BlockProgress {
    inner: Option<Arc<Counts>>,
}

struct Counts {
    target: Target,
    /// Rows the step gets from the block.
    total: AtomicU64,
    /// Rows of the slices already done.
    finished: AtomicU64,
    /// Rows of the current slice, and how many of them the function reported.
    slice: AtomicU64,
    within: AtomicU64,
}

impl BlockProgress {
    /// The progress of the call this thread is running a function for.
    pub fn current() -> Self {
        CURRENT.with(|current| current.borrow().clone().unwrap_or_default())
    }

    /// The function finished `rows` more rows of its current batch.
    pub fn rows_done(&self, rows: u64) {
        let Some(counts) = &self.inner else { return };
        let slice = counts.slice.load(Ordering::Relaxed);
        let within = counts.within.fetch_add(rows, Ordering::Relaxed) + rows;
        counts.send(counts.finished.load(Ordering::Relaxed) + within.min(slice));
    }

    /// Progress over `total` rows, reported through the running call (none
    /// when the call reports nowhere).
    pub(crate) fn start(total: usize) -> Self {
        let task = photon::TaskProgress::current();
        let target = if task.is_reporting() {
            Target::Call(task)
        } else if let Ok(local) = LOCAL_CALL.try_with(Arc::clone) {
            Target::Local(local)
        } else {
            return Self::default();
        };
        Self {
            inner: Some(Arc::new(Counts {
                target,
                total: AtomicU64::new(total as u64),
                finished: AtomicU64::new(0),
                slice: AtomicU64::new(0),
                within: AtomicU64::new(0),
            })),
        }
    }

    /// Runs `call` on a slice of `rows` rows with this progress as the
    /// current one, then counts the slice as done.
    pub(crate) fn slice<T>(&self, rows: usize, call: impl FnOnce() -> T) -> T {
        let Some(counts) = &self.inner else {
            return call();
        };
        counts.slice.store(rows as u64, Ordering::Relaxed);
        counts.within.store(0, Ordering::Relaxed);
        let previous = CURRENT.with(|current| current.replace(Some(self.clone())));
        let output = call();
        CURRENT.with(|current| *current.borrow_mut() = previous);
        let finished = counts.finished.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        counts.slice.store(0, Ordering::Relaxed);
        counts.send(finished);
        output
    }

    /// `rows` of the total are done (a stage that streams its block).
    pub(crate) fn set_done(&self, rows: usize) {
        if let Some(counts) = &self.inner {
            counts.send(rows as u64);
        }
    }
}

impl Counts {
    fn send(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        match &self.target {
            Target::Call(task) => task.set(done.min(total), total),
            Target::Local(local) => {
                local.total.store(total, Ordering::Relaxed);
                local.done.store(done.min(total), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_call_nothing_is_reported_and_functions_still_run() {
        let progress = BlockProgress::start(100);
        assert!(progress.inner.is_none());
        assert_eq!(progress.slice(10, || 7), 7);
        BlockProgress::current().rows_done(5);
    }
}
