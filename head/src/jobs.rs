//! The job table: one record per submitted job, kept in memory and persisted
//! on every change (see `supervisor` for what moves a job between states).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_proto::JobId;
use photon_proto::v1::{JobRecord, JobState};

/// The head's jobs, by id.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<HashMap<String, JobRecord>>,
    ids: Mutex<IdAllocator>,
}

/// Job ids in order from a random start (so that two heads' ids rarely
/// meet), skipping any in use.
struct IdAllocator {
    next: u32,
    /// Every id handed out (to a submitted job or an ad-hoc driver) or in
    /// use by a driver attached before a restart: never handed out again.
    issued: HashSet<JobId>,
}

impl Default for IdAllocator {
    fn default() -> Self {
        let random = photon_proto::NodeId::random();
        let start = JobId::from_slice(&random.as_bytes()[..JobId::SIZE]).expect("4 bytes");
        Self {
            next: start.as_u32(),
            issued: HashSet::new(),
        }
    }
}

impl JobTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the records persisted by an earlier run of the head.
    pub fn restore(&self, records: Vec<JobRecord>) {
        let mut jobs = self.lock();
        for record in records {
            jobs.insert(record.job_id.clone(), record);
        }
    }

    /// A fresh job id, for a submitted job or an ad-hoc driver: unused by
    /// any job here and never handed out before by this head.
    pub fn new_id(&self) -> JobId {
        let jobs = self.lock();
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let id = JobId::from_u32(ids.next);
            ids.next = ids.next.wrapping_add(1);
            if !jobs.contains_key(&id.to_string()) && ids.issued.insert(id) {
                return id;
            }
        }
    }

    /// Marks ids in use by drivers that were attached before a restart.
    pub fn reserve(&self, ids: impl IntoIterator<Item = JobId>) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issued
            .extend(ids);
    }

    /// Adds a new job.
    pub fn insert(&self, record: JobRecord) {
        self.lock().insert(record.job_id.clone(), record);
    }

    /// The job `id`, if known.
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        self.lock().get(id).cloned()
    }

    /// Forgets job `id`.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Changes job `id` in place; returns the new record.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let mut jobs = self.lock();
        let record = jobs.get_mut(id)?;
        change(record);
        Some(record.clone())
    }

    /// Every job, oldest submission first.
    pub fn all(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self.lock().values().cloned().collect();
        jobs.sort_by(|a, b| {
            (a.submitted_at_unix_ms, &a.job_id).cmp(&(b.submitted_at_unix_ms, &b.job_id))
        });
        jobs
    }
}

/// Whether a job in `state` has ended for good.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Stopped)
    )
}

/// The lower-case name of a job state, as `photon job` and metrics print it.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Stopped => "stopped",
        JobState::Unspecified => "unknown",
    }
}

/// Every state a job can be in, for metrics that list each.
pub const STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Stopped,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_in_use_by_a_job_or_a_reattaching_driver_is_never_handed_out() {
        let table = JobTable::default();
        let first = table.new_id().as_u32();
        table.reserve([JobId::from_u32(first.wrapping_add(1))]);
        table.insert(JobRecord {
            job_id: JobId::from_u32(first.wrapping_add(2)).to_string(),
            ..Default::default()
        });
        assert_eq!(table.new_id().as_u32(), first.wrapping_add(3));
        let ids: HashSet<JobId> = (0..1000).map(|_| table.new_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn ids_are_unique_and_jobs_list_in_submission_order() {
        let table = JobTable::default();
        let first = table.new_id().to_string();
        table.insert(JobRecord {
            job_id: first.clone(),
            submitted_at_unix_ms: 2,
            ..Default::default()
        });
        let second = table.new_id().to_string();
        assert_ne!(first, second);
        table.insert(JobRecord {
            job_id: second.clone(),
            submitted_at_unix_ms: 1,
            ..Default::default()
        });
        let order: Vec<String> = table.all().into_iter().map(|j| j.job_id).collect();
        assert_eq!(order, [second.clone(), first]);
        let updated = table
            .update(&second, |j| j.state = JobState::Failed as i32)
            .unwrap();
        assert!(is_terminal(updated.state));
        assert_eq!(state_name(updated.state), "failed");
        assert!(table.update("00000000", |_| {}).is_none());
    }
}
