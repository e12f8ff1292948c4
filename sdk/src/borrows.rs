//! This process's changes to the head's count of references held outside
//! their owner (`head/src/borrows.rs`): a borrower's first reference and its
//! last one dropping, an owner's last reference to an object it lent, and
//! the references a call's return objects hold (taken by the worker that
//! returned them, ended by the caller that frees the return).
//! They are sent in the order they happened, in the background, batched;
//! a worker waits for them before it replies to a call, so the caller, which
//! holds what it passed until the reply, never lets an object go before the
//! head knows who borrowed it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::ObjectId;
use photon_proto::v1::{BorrowChange, BorrowUpdate, UpdateBorrowsRequest};

use crate::context::Core;
use crate::error::{Error, Result};

/// How long a batch keeps being offered to a head that does not answer (one
/// restarting).
const SEND_FOR: Duration = Duration::from_secs(30);

/// Changes not yet sent, and the lock that keeps batches in order.
#[derive(Default)]
pub(crate) struct BorrowUpdates {
    unsent: Mutex<Vec<BorrowUpdate>>,
    sending: tokio::sync::Mutex<()>,
}

impl BorrowUpdates {
    /// Queues a change by this process and sends it in the background.
    pub(crate) fn note(&self, core: &Arc<Core>, id: ObjectId, change: BorrowChange) {
        self.queue(core, id, change, Vec::new());
    }

    /// Queues a change to the references that return object `holder`
    /// holds, and sends it in the background.
    pub(crate) fn note_held_by(
        &self,
        core: &Arc<Core>,
        id: ObjectId,
        change: BorrowChange,
        holder: ObjectId,
    ) {
        self.queue(core, id, change, holder.to_vec());
    }

    fn queue(&self, core: &Arc<Core>, id: ObjectId, change: BorrowChange, holder_object: Vec<u8>) {
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(BorrowUpdate {
                object_id: id.to_vec(),
                change: change as i32,
                holder_object,
            });
        let core = core.clone();
        core.runtime.clone().spawn(async move {
            if let Err(err) = core.borrows.flush(&core).await {
                tracing::warn!(error = %err, "borrowed references were not counted: objects may be kept until the job ends");
            }
        });
    }

    /// Whether nothing is queued or being sent.
    pub(crate) fn idle(&self) -> bool {
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && self.sending.try_lock().is_ok()
    }

    /// Sends what is queued, after any batch being sent; returns once the
    /// head has it.
    pub(crate) async fn flush(&self, core: &Core) -> Result<()> {
        let _in_order = self.sending.lock().await;
        let updates = std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|p| p.into_inner()));
        if updates.is_empty() {
            return Ok(());
        }
        let request = UpdateBorrowsRequest {
            job_id: core.job_id().to_vec(),
            owner_tag: core.owner_tag(),
            updates,
        };
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match core.head.clone().update_borrows(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() < SEND_FOR =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(status) => {
                    return Err(Error::cluster(
                        "cannot tell the head about borrowed object references",
                        &status,
                    ));
                }
            }
        }
    }
}
