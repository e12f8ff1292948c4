//! A worker whose task waits on objects (its nested tasks' results) tells its
//! raylet, which lends the lease's CPUs to other tasks until it resumes, as
//! Ray does: otherwise tasks that wait on nested tasks could hold every CPU
//! of the cluster while their nested tasks queue for one, and never finish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::WorkerId;
use photon_proto::v1::WorkerBlockedRequest;
use tokio::sync::watch;
use tracing::debug;

use crate::clients::RayletClient;

/// A wait shorter than this is not reported (most gets of a quick task's
/// result are): two messages to the raylet would cost more than they lend.
const REPORT_AFTER: Duration = Duration::from_millis(2);

/// Counts a worker's waits and reports whether any is going on.
pub(crate) struct BlockedReporter {
    waits: Mutex<usize>,
    state: watch::Sender<bool>,
}

/// One wait: blocked until dropped.
pub(crate) struct Waiting(Arc<BlockedReporter>);

impl BlockedReporter {
    /// Starts reporting `worker`'s state to its raylet (on the current runtime).
    pub(crate) fn start(raylet: RayletClient, worker: WorkerId) -> Arc<Self> {
        let (state, changes) = watch::channel(false);
        tokio::spawn(forward(changes, raylet, worker));
        Arc::new(Self {
            waits: Mutex::new(0),
            state,
        })
    }

    /// A wait begins; it ends when the guard drops.
    pub(crate) fn wait(self: &Arc<Self>) -> Waiting {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        *waits += 1;
        if *waits == 1 {
            self.state.send_replace(true);
        }
        Waiting(self.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waits = self.0.waits.lock().unwrap_or_else(|p| p.into_inner());
        *waits -= 1;
        if *waits == 0 {
            self.0.state.send_replace(false);
        }
    }
}

/// Sends the state to the raylet when it differs from what the raylet last
/// heard, and a blocked state only once it has lasted [`REPORT_AFTER`].
async fn forward(mut changes: watch::Receiver<bool>, mut raylet: RayletClient, worker: WorkerId) {
    let mut reported = false;
    loop {
        if changes.changed().await.is_err() {
            return; // the worker's context is gone
        }
        let mut blocked = *changes.borrow_and_update();
        if blocked && !reported {
            tokio::time::sleep(REPORT_AFTER).await;
            blocked = *changes.borrow_and_update();
        }
        if blocked == reported {
            continue;
        }
        // Until the raylet has heard (a lost report would leave CPUs lent
        // for the rest of the lease, or never lent on the next one).
        loop {
            let request = WorkerBlockedRequest {
                worker_id: worker.to_vec(),
                blocked,
            };
            match raylet.worker_blocked(request).await {
                Ok(_) => {
                    reported = blocked;
                    break;
                }
                Err(status) => {
                    debug!(%status, blocked, "cannot tell the raylet this worker waits; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }
}

/// How long a failed report waits before it is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(100);
