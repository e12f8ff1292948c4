//! Workers of this node that own work of their own (nested tasks, actors,
//! puts). When one ends, however it ends, the raylet tells the head, which
//! ends what it owned everywhere: an object's fate follows its owner's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use photon_proto::v1::OwnerDiedRequest;
use photon_proto::{JobId, WorkerId};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::head_link::HeadLink;
use crate::worker_pool::WorkerPool;

/// The owners among this node's workers: worker → (job, owner tag).
#[derive(Default)]
pub struct Owners {
    watched: Mutex<HashMap<WorkerId, (JobId, u32)>>,
}

impl Owners {
    /// `WatchOwner`: `worker` owns work under `owner_tag` of `job`.
    pub fn watch(&self, worker: WorkerId, job: JobId, owner_tag: u32) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(worker, (job, owner_tag));
    }

    /// Reports each watched worker's end to the head, until the pool closes.
    /// Reports go through a queue of their own, sent and retried apart, so
    /// a slow or restarting head never makes this miss an exit.
    pub async fn report_deaths(self: Arc<Self>, pool: Arc<WorkerPool>, head: Arc<HeadLink>) {
        let (reports, queued) = tokio::sync::mpsc::unbounded_channel();
        let _sender = AbortOnDropHandle::new(tokio::spawn(send_reports(queued, head)));
        let mut exits = pool.subscribe();
        loop {
            let exit = match exits.recv().await {
                Ok(exit) => exit,
                Err(RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "missed worker exits: owners among them keep what they owned until their job ends"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let owner = self
                .watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&exit.worker_id);
            let Some((job, owner_tag)) = owner else {
                continue;
            };
            let reason = format!(
                "its worker {} (pid {}) {}",
                exit.worker_id, exit.pid, exit.reason
            );
            info!(%job, owner_tag, %reason, "an owner ended");
            let _ = reports.send(OwnerDiedRequest {
                job_id: job.to_vec(),
                owner_tag,
                reason,
            });
        }
    }
}

/// How often one report is tried, and how long apart.
const REPORT_TRIES: u32 = 30;
const REPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends the queued reports in order, each until the head takes it (a
/// restarting head is back within seconds; after that the job's end frees
/// what the owner owned).
async fn send_reports(
    mut queued: tokio::sync::mpsc::UnboundedReceiver<OwnerDiedRequest>,
    head: Arc<HeadLink>,
) {
    while let Some(report) = queued.recv().await {
        for attempt in 1..=REPORT_TRIES {
            match head.owner_died(report.clone()).await {
                Ok(()) => break,
                Err(status) if attempt == REPORT_TRIES => {
                    warn!(
                        owner_tag = report.owner_tag,
                        error = status.message(),
                        "cannot tell the head that an owner ended: what it owned stays until its job ends"
                    );
                }
                Err(_) => tokio::time::sleep(REPORT_RETRY).await,
            }
        }
    }
}
