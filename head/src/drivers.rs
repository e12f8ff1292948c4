//! Drivers' sessions: an actor's life follows the driver that created it
//! (Ray's ownership). Each driver keeps an `AttachDriver` stream open; when
//! the last one of a job closes (however the driver ended: exit, crash,
//! SIGKILL, a lost connection) and none reopens within [`GRACE`] (a driver
//! whose connection blipped, or that lost the head to a restart, reattaches
//! at once), the head ends what the job left: its actors, and its workers on
//! every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::JobId;
use tracing::info;

use crate::service::HeadState;

/// How long a job's drivers may be away before its actors are ended.
pub const GRACE: Duration = Duration::from_secs(2);

/// Open sessions per job.
#[derive(Default)]
pub(crate) struct DriverSessions {
    open: Mutex<HashMap<JobId, usize>>,
}

impl DriverSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `job` opened; it lasts until the returned guard drops.
    pub(crate) fn open(state: &Arc<HeadState>, job: JobId) -> SessionGuard {
        *state.drivers.lock().entry(job).or_default() += 1;
        SessionGuard {
            state: state.clone(),
            job,
        }
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
            }
        }
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
            state.end_job_everywhere(job, "its driver ended").await;
        });
    }
}
