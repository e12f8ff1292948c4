//! Owners other than drivers: workers that submit tasks, create actors or
//! put objects of their own. Each gets a tag unique in its job, which every
//! id it makes carries (`TaskId::for_owner`), so when it ends (its raylet
//! reports it, or its node dies) everything it owned is found by prefix and
//! ended with it, as a driver's job is.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_proto::{JobId, NodeId, ObjectId};
use tracing::info;

use crate::service::HeadState;

/// The owners this head has tagged, by job.
#[derive(Default)]
pub(crate) struct Owners {
    jobs: Mutex<HashMap<JobId, JobOwners>>,
}

#[derive(Default)]
struct JobOwners {
    /// The last tag given out in the job.
    last_tag: u32,
    /// Live owners: tag → the node they run on.
    live: HashMap<u32, NodeId>,
}

impl Owners {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, JobOwners>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new tag in `job` for a worker on `node` (never 0, the driver's).
    pub(crate) fn register(&self, job: JobId, node: NodeId) -> u32 {
        let mut jobs = self.lock();
        let owners = jobs.entry(job).or_default();
        // A restarted head starts from a random tag, away from earlier ones.
        if owners.last_tag == 0 {
            let random = NodeId::random();
            let bytes = random.as_bytes();
            owners.last_tag = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        loop {
            owners.last_tag = owners.last_tag.wrapping_add(1);
            if owners.last_tag != 0 && !owners.live.contains_key(&owners.last_tag) {
                break;
            }
        }
        owners.live.insert(owners.last_tag, node);
        owners.last_tag
    }

    /// The owner ended; whether it was known.
    fn remove(&self, job: JobId, tag: u32) -> bool {
        self.lock()
            .get_mut(&job)
            .is_some_and(|owners| owners.live.remove(&tag).is_some())
    }

    /// The owners that ran on `node`, forgotten.
    fn take_node(&self, node: NodeId) -> Vec<(JobId, u32)> {
        let mut ended = Vec::new();
        for (job, owners) in self.lock().iter_mut() {
            owners.live.retain(|tag, on| {
                let here = *on == node;
                if here {
                    ended.push((*job, *tag));
                }
                !here
            });
        }
        ended
    }

    /// The job ended: its owners with it.
    pub(crate) fn forget_job(&self, job: JobId) {
        self.lock().remove(&job);
    }
}

impl HeadState {
    /// `OwnerDied`: ends what the owner `tag` of `job` owned, everywhere.
    pub(crate) async fn owner_ended(&self, job: JobId, tag: u32, reason: &str) {
        if tag == 0 || !self.owners.remove(job, tag) {
            return; // the driver (its job's end covers it), or already ended
        }
        info!(%job, owner_tag = tag, %reason, "an owner ended: ending what it owned");
        let adopted = self.owner_gone(job, tag, reason).await;
        let why = format!("its owner ended: {reason}");
        self.end_owned_everywhere(job, tag, &why, &adopted).await;
    }

    /// What owner `tag` of `job` borrowed is returned (objects nobody else
    /// holds are freed), and how it ended is kept for its own objects'
    /// borrowers; returns its objects that outlive it (it had released
    /// them, and borrowers hold them).
    async fn owner_gone(&self, job: JobId, tag: u32, how: &str) -> HashSet<ObjectId> {
        let ended = self.borrows.owner_ended(job, tag, how);
        self.free_everywhere(&ended.free).await;
        ended.adopted
    }

    /// The owners that ran on a dead node end with it.
    pub(crate) async fn owners_lost(&self, node: NodeId, reason: &str) {
        for (job, tag) in self.owners.take_node(node) {
            info!(%job, owner_tag = tag, %node, "an owner's node died: ending what it owned");
            let adopted = self
                .owner_gone(job, tag, &format!("its node {node} died: {reason}"))
                .await;
            let why = format!("its owner's node {node} died: {reason}");
            self.end_owned_everywhere(job, tag, &why, &adopted).await;
        }
    }
}
