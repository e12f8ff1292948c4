//! The job table: one record per submitted job, kept in memory and persisted
//! on every change (see `supervisor` for what moves a job between states).

use std::collections::HashMap;
use std::sync::Mutex;

use photon_proto::JobId;
use photon_proto::v1::{JobRecord, JobState};

/// The head's jobs, by id.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<HashMap<String, JobRecord>>,
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

    /// A fresh job id, unused by any job here. Random, like drivers' own ids,
    /// so that ids of submitted and ad-hoc drivers do not collide by design.
    pub fn new_id(&self) -> JobId {
        let jobs = self.lock();
        loop {
            let bytes = photon_proto::NodeId::random();
            let id = JobId::from_slice(&bytes.as_bytes()[..JobId::SIZE]).expect("4 bytes");
            if !jobs.contains_key(&id.to_string()) {
                return id;
            }
        }
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
