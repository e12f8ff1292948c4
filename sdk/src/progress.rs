//! Progress of a running call, reported by the call itself and read by its
//! owner with [`Context::progress`](crate::Context::progress).
//!
//! A remote function or actor method that works through its input in pieces
//! (a model over a block, batch by batch) takes the call's reporter with
//! [`TaskProgress::current`] and sets `done` of `total` as it goes. The
//! figures travel on the call's reply stream ahead of its result, so an owner
//! sees a long call move instead of a block that is all or nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use photon_proto::v1::{TaskReply, task_reply};
use tokio::sync::mpsc;
use tonic::Status;

/// Updates closer together than this are folded into the next one: a GPU
/// finishing a batch every few milliseconds must not flood the stream.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The reply stream of the call being run, as the worker hands it over.
pub(crate) type ReplySender = mpsc::UnboundedSender<Result<TaskReply, Status>>;

tokio::task_local! {
    static CURRENT: TaskProgress;
}

/// The reporter of one running call. Cheap to clone and `Send + Sync`, so a
/// call may hand it to the threads it computes on.
#[derive(Clone)]
pub struct TaskProgress {
    inner: Option<Arc<Reporter>>,
}

struct Reporter {
    task_id: Vec<u8>,
    replies: ReplySender,
    done: AtomicU64,
    total: AtomicU64,
    last_sent: Mutex<Option<Instant>>,
}

impl TaskProgress {
    /// The reporter of the call running on this task; one that reports
    /// nowhere outside a call (in a driver, or in a test).
    pub fn current() -> Self {
        CURRENT
            .try_with(Clone::clone)
            .unwrap_or(Self { inner: None })
    }

    /// Whether updates reach an owner (false outside a call).
    pub fn is_reporting(&self) -> bool {
        self.inner.is_some()
    }

    /// The call has done `done` of `total` units.
    pub fn set(&self, done: u64, total: u64) {
        let Some(reporter) = &self.inner else { return };
        reporter.done.store(done, Ordering::Relaxed);
        reporter.total.store(total, Ordering::Relaxed);
        reporter.send_if_due();
    }

    /// Runs a call's future with `self` as its reporter.
    pub(crate) async fn scope<F: Future>(self, call: F) -> F::Output {
        CURRENT.scope(self, call).await
    }

    /// A reporter sending on `replies` for the call `task_id`.
    pub(crate) fn for_call(task_id: Vec<u8>, replies: ReplySender) -> Self {
        Self {
            inner: Some(Arc::new(Reporter {
                task_id,
                replies,
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                last_sent: Mutex::new(None),
            })),
        }
    }
}

impl Reporter {
    fn send_if_due(&self) {
        {
            let mut last = self.last_sent.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < MIN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let progress = photon_proto::v1::TaskProgress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        };
        // A closed stream means the caller went away: nothing to tell.
        let _ = self.replies.send(Ok(TaskReply {
            task_id: self.task_id.clone(),
            result: Some(task_reply::Result::Progress(progress)),
            ..TaskReply::default()
        }));
    }
}

/// What an owner knows of a running call: `done` of `total` units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallProgress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// The owner's view of a progress reply.
pub(crate) fn from_proto(progress: &photon_proto::v1::TaskProgress) -> CallProgress {
    CallProgress {
        done: progress.done,
        total: progress.total,
    }
}
