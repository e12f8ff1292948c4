//! Drivers' sessions: an actor's life follows the driver that created it
//! (Ray's ownership). Each driver keeps an `AttachDriver` stream open; when
//! the last one of a job closes (however the driver ended: exit, crash,
//! SIGKILL, a lost connection) and none reopens within [`GRACE`] (a driver
//! whose connection blipped, or that lost the head to a restart, reattaches
//! at once), the head ends what the job left: its actors, and its workers on
//! every node. Jobs with a driver attached are persisted: a restarted head
//! gives their drivers [`REATTACH_GRACE`] to come back and ends the jobs of
//! those that do not (they died while the head was down).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::JobId;
use tracing::{info, warn};

use crate::service::HeadState;

/// How long a job's drivers may be away before its actors are ended.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long a restarted head waits for the drivers that were attached
/// before it went down (they retry every 200 ms).
pub const REATTACH_GRACE: Duration = Duration::from_secs(5);

/// Open sessions per job.
#[derive(Default)]
pub(crate) struct DriverSessions {
    open: Mutex<HashMap<JobId, usize>>,
    /// The packages the attached drivers' workers use, by job.
    packages: Mutex<HashMap<JobId, HashSet<String>>>,
}

impl DriverSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The packages of every attached driver (kept by the package retention).
    pub(crate) fn packages_in_use(&self) -> HashSet<String> {
        let packages = self.packages.lock().unwrap_or_else(|p| p.into_inner());
        packages.values().flatten().cloned().collect()
    }

    /// A session of `job` opened, whose workers use `packages`; it lasts
    /// until the returned guard drops.
    pub(crate) fn open(state: &Arc<HeadState>, job: JobId, packages: Vec<String>) -> SessionGuard {
        state.drivers.pin(job, packages);
        let sessions = {
            let mut open = state.drivers.lock();
            let count = open.entry(job).or_default();
            *count += 1;
            *count
        };
        if sessions == 1 {
            let persistence = state.persistence.clone();
            state.tasks.spawn_blocking(move || {
                if let Err(err) = persistence.save_driver(job) {
                    warn!(%job, %err, "cannot record the job's driver: a restarted head would not end the job if it dies meanwhile");
                }
            });
        }
        SessionGuard {
            state: state.clone(),
            job,
        }
    }

    /// Keeps `packages` while a session of `job` is open.
    fn pin(&self, job: JobId, packages: Vec<String>) {
        self.packages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(job)
            .or_default()
            .extend(packages);
    }

    fn is_open(&self, job: JobId) -> bool {
        self.lock().get(&job).is_some_and(|&n| n > 0)
    }

    fn close(&self, job: JobId) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&job) {
            *count -= 1;
            if *count == 0 {
                open.remove(&job);
                self.packages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job);
            }
        }
    }

    #[cfg(test)]
    fn open_for_test(&self, job: JobId, packages: Vec<String>) {
        *self.lock().entry(job).or_default() += 1;
        self.pin(job, packages);
    }
}

/// Closes its session when dropped (the driver's stream ended).
pub(crate) struct SessionGuard {
    state: Arc<HeadState>,
    job: JobId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.drivers.close(self.job);
        let state = self.state.clone();
        let job = self.job;
        // The head shutting down closes every stream: that ends no job.
        if state.cancel.is_cancelled() {
            return;
        }
        state.tasks.clone().spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(GRACE) => {}
                () = state.cancel.cancelled() => return,
            }
            if state.drivers.is_open(job) {
                return;
            }
            info!(%job, "the job's driver is gone: ending its actors and workers");
            end_job(&state, job, "its driver ended").await;
        });
    }
}

async fn end_job(state: &HeadState, job: JobId, why: &str) {
    state.end_job_everywhere(job, why).await;
    let persistence = state.persistence.clone();
    let forgotten = tokio::task::spawn_blocking(move || persistence.delete_driver(job)).await;
    if !matches!(forgotten, Ok(Ok(()))) {
        warn!(%job, "cannot forget the job's driver: a restarted head will end the job again");
    }
}

/// On a restarted head: after [`REATTACH_GRACE`], ends the jobs among
/// `attached` (those with a driver when the head went down) whose drivers
/// did not reattach.
pub(crate) async fn end_jobs_of_drivers_gone_while_down(
    state: Arc<HeadState>,
    attached: Vec<JobId>,
) {
    if attached.is_empty() {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(REATTACH_GRACE) => {}
        () = state.cancel.cancelled() => return,
    }
    for job in attached {
        if state.drivers.is_open(job) {
            continue;
        }
        info!(%job, "the job's driver did not come back after the head restarted: ending the job");
        end_job(
            &state,
            job,
            "its driver did not come back after the head restarted",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attached_drivers_packages_are_in_use_until_its_last_session_closes() {
        let sessions = DriverSessions::default();
        let job = JobId::from_u32(7);
        let model = "ab".repeat(32);
        sessions.open_for_test(job, vec![model.clone()]);
        sessions.open_for_test(job, Vec::new());
        sessions.close(job);
        assert!(
            sessions.packages_in_use().contains(&model),
            "one session is still open"
        );
        sessions.close(job);
        assert!(sessions.packages_in_use().is_empty());
    }
}
