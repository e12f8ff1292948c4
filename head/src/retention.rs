//! Retention of finished jobs: a long-running head keeps the records,
//! directories (log, working dir, exit code) and packages of the latest
//! finished jobs, up to a count and an age, and deletes the rest, so its disk
//! stays bounded. `photon job delete` deletes one job now.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use photon_proto::v1::JobRecord;
use tonic::Status;
use tracing::{info, warn};

use crate::jobs::is_terminal;
use crate::service::HeadState;
use crate::supervisor::{now_ms, unknown_job};

/// How often the head looks for finished jobs to delete.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A package no job names is kept this long after its upload: a submission
/// may be on its way.
const UNUSED_PACKAGE_GRACE: Duration = Duration::from_secs(3600);

/// Which finished jobs a head keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// The most finished jobs kept (the latest to end).
    pub keep: usize,
    /// Finished jobs that ended longer ago than this are deleted.
    pub max_age: Duration,
}

impl Default for JobRetention {
    /// The latest 100 finished jobs, for at most 7 days.
    fn default() -> Self {
        Self {
            keep: 100,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl JobRetention {
    /// The finished jobs among `jobs` that this retention does not keep, as
    /// of `now_ms`.
    fn expired(&self, jobs: &[JobRecord], now_ms: u64) -> Vec<String> {
        let mut finished: Vec<&JobRecord> = jobs.iter().filter(|j| is_terminal(j.state)).collect();
        // Latest to end first.
        finished.sort_by_key(|j| std::cmp::Reverse(j.ended_at_unix_ms));
        let oldest_kept = now_ms.saturating_sub(self.max_age.as_millis() as u64);
        finished
            .iter()
            .enumerate()
            .filter(|(rank, job)| *rank >= self.keep || job.ended_at_unix_ms < oldest_kept)
            .map(|(_, job)| job.job_id.clone())
            .collect()
    }
}

impl HeadState {
    /// Deletes finished job `id`: its record, its directory, and packages no
    /// other job uses. A job that has not ended is refused.
    pub(crate) async fn delete_job(&self, id: &str) -> Result<JobRecord, Status> {
        let record = self.jobs.get(id).ok_or_else(|| unknown_job(id))?;
        if !is_terminal(record.state) {
            return Err(Status::failed_precondition(format!(
                "job {id} has not ended ({}): stop it first with `photon job stop {id}`",
                crate::jobs::state_name(record.state)
            )));
        }
        let persistence = self.persistence.clone();
        let key = id.to_string();
        tokio::task::spawn_blocking(move || persistence.delete_job(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        self.jobs.remove(id);
        let dir = self.job_dir(id);
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(job = %id, dir = %dir.display(), %err, "cannot delete the job's directory");
        }
        let in_use = self.packages_in_use();
        for package in [&record.program_package, &record.working_dir_package] {
            if !package.is_empty() && !in_use.contains(package) {
                self.packages.remove(package);
            }
        }
        Ok(record)
    }

    /// Deletes the finished jobs the retention does not keep, and packages
    /// no job names that were uploaded long ago.
    pub(crate) async fn apply_retention(&self) {
        let expired = self.job_retention.expired(&self.jobs.all(), now_ms());
        for id in &expired {
            if let Err(status) = self.delete_job(id).await {
                warn!(job = %id, error = status.message(), "cannot delete an expired job");
            }
        }
        if !expired.is_empty() {
            info!(
                jobs = expired.len(),
                "deleted finished jobs past the retention"
            );
        }
        self.packages
            .remove_unused(&self.packages_in_use(), UNUSED_PACKAGE_GRACE);
    }

    /// The packages the jobs kept name, and those of attached drivers.
    fn packages_in_use(&self) -> HashSet<String> {
        let mut in_use: HashSet<String> = self
            .jobs
            .all()
            .into_iter()
            .flat_map(|j| [j.program_package, j.working_dir_package])
            .collect();
        in_use.extend(self.drivers.packages_in_use());
        in_use
    }
}

/// Applies the retention at start and every [`SWEEP_EVERY`] (as jobs age)
/// until the head stops; a job's end applies it too.
pub(crate) async fn enforce(state: Arc<HeadState>) {
    loop {
        state.apply_retention().await;
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = state.cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use photon_proto::v1::JobState;

    use super::*;

    fn job(id: &str, state: JobState, ended_at_unix_ms: u64) -> JobRecord {
        JobRecord {
            job_id: id.into(),
            state: state as i32,
            ended_at_unix_ms,
            ..JobRecord::default()
        }
    }

    #[test]
    fn the_latest_finished_jobs_are_kept_up_to_the_count_and_age() {
        let day = 24 * 3600 * 1000;
        let now = 30 * day;
        let jobs = [
            job("running", JobState::Running, 0),
            job("old", JobState::Succeeded, now - 8 * day),
            job("a", JobState::Failed, now - 3),
            job("b", JobState::Succeeded, now - 2),
            job("c", JobState::Stopped, now - 1),
        ];
        let retention = JobRetention {
            keep: 2,
            max_age: Duration::from_secs(7 * 24 * 3600),
        };
        let mut expired = retention.expired(&jobs, now);
        expired.sort();
        assert_eq!(expired, ["a", "old"]);
        let roomy = JobRetention {
            keep: 10,
            ..retention
        };
        assert_eq!(roomy.expired(&jobs, now), ["old"]);
    }
}
