//! Workers of this node that own work of their own (nested tasks, actors,
//! puts). When one ends, however it ends, the raylet tells the head, which
//! ends what it owned everywhere: an object's fate follows its owner's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use photon_proto::v1::OwnerDiedRequest;
use photon_proto::{JobId, WorkerId};
use tokio::sync::broadcast::error::RecvError;
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
    pub async fn report_deaths(self: Arc<Self>, pool: Arc<WorkerPool>, head: Arc<HeadLink>) {
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
            let request = OwnerDiedRequest {
                job_id: job.to_vec(),
                owner_tag,
                reason,
            };
            if let Err(status) = head.owner_died(request).await {
                warn!(%job, owner_tag, error = status.message(), "cannot tell the head that an owner ended");
            }
        }
    }
}
