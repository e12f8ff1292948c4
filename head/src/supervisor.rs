//! The job supervisor: runs each submitted job's program on the head node as
//! its driver, records its outcome, and when it ends makes sure nothing of it
//! is left: its process group, its actors and its workers on every node.
//!
//! The driver runs under `sh`, which writes its exit code to the job's
//! directory. Drivers are not children the head must outlive: after a
//! `kill -9` and restart the head adopts the drivers still running (it knows
//! them by pid and start time) and reads the exit code of those that ended
//! while it was down.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use photon_proto::v1::{
    FreeJobObjectsRequest, JobRecord, JobState, KillJobWorkersRequest, NodeState,
};
use photon_proto::{ActorId, JobId, ObjectId, process_started};
use tokio::process::Command;
use tonic::Status;
use tracing::{info, warn};

use crate::jobs::is_terminal;
use crate::service::HeadState;

/// Runs the program, then records its exit code where a restarted head finds it.
const DRIVER_SCRIPT: &str =
    r#""$@"; code=$?; echo "$code" > "$PHOTON_JOB_DIR/exit_code"; exit "$code""#;
/// Lines of output kept in a finished job's record.
const LAST_LINES: usize = 20;
/// How often an adopted driver (one the head did not start) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// SIGTERM to SIGKILL when stopping a job and the caller gave no grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Environment a driver is started with, besides the job's own.
pub mod env {
    /// The head's address (the SDK connects to it).
    pub const ADDRESS: &str = "PHOTON_ADDRESS";
    /// The cluster token.
    pub const TOKEN: &str = "PHOTON_TOKEN";
    /// The job's id; the SDK uses it as the driver's job id.
    pub const JOB_ID: &str = "PHOTON_JOB_ID";
    /// The job's directory on the head node (log, exit code, working dir).
    pub const JOB_DIR: &str = "PHOTON_JOB_DIR";
    /// The uploaded program's content hash; raylets on other nodes fetch it by this.
    pub const PROGRAM_PACKAGE: &str = "PHOTON_PROGRAM_PACKAGE";
    /// The working directory's content hash; every raylet unpacks it for the
    /// job's workers by this.
    pub const WORKING_DIR_PACKAGE: &str = "PHOTON_WORKING_DIR_PACKAGE";
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The last `count` lines of the file at `path` (reads at most its last 64 KiB).
pub fn last_lines(path: &Path, count: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map_or(0, |m| m.len());
    let start = length.saturating_sub(64 << 10);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(count);
    lines[skip..].iter().map(|l| l.to_string()).collect()
}

/// How a driver ended: its exit code, or the signal that killed the `sh` running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Code(i32),
    Signal(i32),
    /// It ended while the head was down and left no exit code.
    Unknown,
}

impl Ending {
    fn exit_code(self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(code),
            Self::Signal(signal) => Some(128 + signal),
            Self::Unknown => None,
        }
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.to_string())
}

/// The final state and message of a job that ended so.
fn verdict(ending: Ending, stop_requested: bool) -> (JobState, String) {
    if stop_requested {
        let how = match ending {
            Ending::Signal(9) => " (killed: it outlived the grace period)",
            _ => "",
        };
        return (JobState::Stopped, format!("stopped by request{how}"));
    }
    match ending {
        Ending::Code(0) => (JobState::Succeeded, String::new()),
        Ending::Code(code) if code > 128 => (
            JobState::Failed,
            format!(
                "the driver was killed by {} (exit code {code})",
                signal_name(code - 128)
            ),
        ),
        Ending::Code(code) => (
            JobState::Failed,
            format!("the driver exited with code {code}"),
        ),
        Ending::Signal(signal) => (
            JobState::Failed,
            format!("the driver was killed by {}", signal_name(signal)),
        ),
        Ending::Unknown => (
            JobState::Failed,
            "the driver ended while the head was down and left no exit code".into(),
        ),
    }
}

impl HeadState {
    /// The directory of job `id`: its log, exit code and working directory.
    pub(crate) fn job_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("jobs").join(id)
    }

    pub(crate) async fn save_job(&self, record: JobRecord) {
        let what = format!("job {}", record.job_id);
        self.persist(what, move |db| db.save_job(&record)).await;
    }

    /// Records a new job and starts its driver.
    pub(crate) async fn submit_job(
        self: &Arc<Self>,
        request: photon_proto::v1::SubmitJobRequest,
    ) -> Result<JobRecord, Status> {
        if request.program.trim().is_empty() {
            return Err(Status::invalid_argument(
                "no program given: name the program to run after `--`",
            ));
        }
        for (what, hash) in [
            ("program", &request.program_package),
            ("working directory", &request.working_dir_package),
        ] {
            if !hash.is_empty() && !self.packages.has(hash) {
                return Err(Status::failed_precondition(format!(
                    "the {what} package {hash} was not uploaded to this head; upload it first"
                )));
            }
        }
        let id = self.jobs.new_id().to_string();
        let dir = self.job_dir(&id);
        std::fs::create_dir_all(dir.join("work")).map_err(|e| {
            Status::internal(format!(
                "cannot create the job's directory {}: {e}",
                dir.display()
            ))
        })?;
        let name = if request.name.is_empty() {
            Path::new(&request.program)
                .file_name()
                .map_or_else(|| request.program.clone(), |n| n.to_string_lossy().into())
        } else {
            request.name
        };
        let record = JobRecord {
            job_id: id.clone(),
            name,
            program: request.program,
            args: request.args,
            env: request.env,
            program_package: request.program_package,
            working_dir_package: request.working_dir_package,
            state: JobState::Pending as i32,
            submitted_at_unix_ms: now_ms(),
            log_path: dir.join("job.log").display().to_string(),
            ..Default::default()
        };
        self.jobs.insert(record.clone());
        self.save_job(record.clone()).await;
        info!(job = %id, name = %record.name, program = %record.program, "job submitted");
        self.tasks.spawn(supervise(self.clone(), id));
        Ok(record)
    }

    /// Asks job `id` to stop: SIGTERM to its driver's process group, SIGKILL
    /// after `grace`. A job that already ended is returned as it is.
    pub(crate) async fn stop_job(
        self: &Arc<Self>,
        id: &str,
        grace: Duration,
    ) -> Result<JobRecord, Status> {
        let record = self.jobs.get(id).ok_or_else(|| unknown_job(id))?;
        if is_terminal(record.state) {
            return Ok(record);
        }
        let record = self
            .jobs
            .update(id, |r| r.stop_requested = true)
            .ok_or_else(|| unknown_job(id))?;
        self.save_job(record.clone()).await;
        info!(job = %id, "stopping job");
        self.stop_job_now(id, grace);
        Ok(record)
    }

    /// SIGTERM to job `id`'s driver group, SIGKILL after `grace`; nothing
    /// while its driver is not started (the supervisor checks again then).
    fn stop_job_now(self: &Arc<Self>, id: &str, grace: Duration) {
        let Some(record) = self.jobs.get(id) else {
            return;
        };
        if record.driver_pid == 0 {
            return;
        }
        signal_group(record.driver_pid, Signal::SIGTERM);
        let state = self.clone();
        let id = id.to_string();
        self.tasks.spawn(async move {
            tokio::select! {
                () = state.cancel.cancelled() => {}
                () = tokio::time::sleep(grace) => {}
            }
            if let Some(record) = state.jobs.get(&id)
                && !is_terminal(record.state)
            {
                warn!(job = %id, ?grace, "job outlived its grace period: killing it");
                signal_group(record.driver_pid, Signal::SIGKILL);
            }
        });
    }

    /// After a restart: adopts drivers still running, records the outcome of
    /// those that ended while the head was down.
    /// `restored` are the records loaded at start: only those (jobs
    /// submitted since are this run's own).
    pub(crate) async fn resume_jobs(self: &Arc<Self>, restored: Vec<JobRecord>) {
        for record in restored {
            if is_terminal(record.state) {
                continue;
            }
            let id = record.job_id.clone();
            let alive = record.driver_pid != 0
                && process_started(record.driver_pid) == Some(record.driver_start_ticks);
            if alive {
                info!(job = %id, pid = record.driver_pid, "adopting a running job's driver");
                self.tasks.spawn(watch_adopted(self.clone(), id));
            } else if record.state == JobState::Pending as i32 {
                self.finish_job(
                    &id,
                    JobState::Failed,
                    None,
                    "the head restarted before the driver started; submit the job again".into(),
                )
                .await;
            } else {
                let ending = self.recorded_ending(&id);
                let (state, message) = verdict(ending, record.stop_requested);
                self.finish_job(&id, state, ending.exit_code(), message)
                    .await;
            }
        }
    }

    fn recorded_ending(&self, id: &str) -> Ending {
        std::fs::read_to_string(self.job_dir(id).join("exit_code"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map_or(Ending::Unknown, Ending::Code)
    }

    /// Ends everything job `id` left running (its workers' last output
    /// reaches the log meanwhile), then records how it ended.
    async fn finish_job(&self, id: &str, state: JobState, exit_code: Option<i32>, message: String) {
        if let Some(record) = self.jobs.get(id) {
            self.clean_up_job(&record).await;
        }
        let log = self.job_dir(id).join("job.log");
        let lines = last_lines(&log, LAST_LINES);
        let Some(record) = self.jobs.update(id, |r| {
            r.state = state as i32;
            r.exit_code = exit_code;
            r.ended_at_unix_ms = now_ms();
            r.message = message;
            r.last_lines = lines;
        }) else {
            return;
        };
        info!(job = %id, state = crate::jobs::state_name(record.state), exit_code, message = %record.message, "job ended");
        self.save_job(record).await;
        self.apply_retention().await;
    }

    /// Kills what a finished job left: processes in its driver's group, and
    /// its workers (actors' included) on every live node.
    async fn clean_up_job(&self, record: &JobRecord) {
        if record.driver_pid != 0 {
            signal_group(record.driver_pid, Signal::SIGKILL);
        }
        let Ok(job) = record.job_id.parse::<JobId>() else {
            return;
        };
        self.end_job_everywhere(job, "its job ended").await;
    }

    /// Ends job `job`'s actors (`why` is recorded as their death) and its
    /// workers on every live node, then frees its objects there (in memory,
    /// spilled or half written) and drops its lineage: an object's fate
    /// follows its owner's.
    pub(crate) async fn end_job_everywhere(&self, job: JobId, why: &str) {
        // First: owners killed with the job report their end meanwhile,
        // which must not start a second cleanup each.
        self.owners.forget_job(job);
        self.borrows.forget_job(job);
        self.remove_groups_of_job(job, why).await;
        self.end_owned_everywhere(job, 0, why, &HashSet::new())
            .await;
    }

    /// [`end_job_everywhere`](Self::end_job_everywhere) for what the owner
    /// `owner_tag` of `job` owned (0: the whole job): its non-detached
    /// actors, the workers leased to it, its objects (but those in `keep`:
    /// released by it and still borrowed) and lineage.
    pub(crate) async fn end_owned_everywhere(
        &self,
        job: JobId,
        owner_tag: u32,
        why: &str,
        keep: &HashSet<ObjectId>,
    ) {
        let actors = self.actors.live_where(|spec| {
            !spec.detached
                && ActorId::from_slice(&spec.actor_id).is_ok_and(|a| {
                    a.job_id() == job && (owner_tag == 0 || a.owner_tag() == owner_tag)
                })
        });
        // Dead first, so that killing their workers restarts nothing; the
        // raylets kill them with the job's other workers, forwarding their
        // last output on the way.
        for actor in actors {
            if owner_tag == 0 {
                self.mark_actor_dead(actor, why).await;
            } else {
                // The job's other workers live on: kill this actor's own.
                self.end_actor(actor, why).await;
            }
        }
        for node in self.nodes.snapshot() {
            if node.state != NodeState::Alive as i32 {
                continue;
            }
            let address = node.info.map(|i| i.address).unwrap_or_default();
            let Ok(mut raylet) = self.raylet(&address) else {
                continue;
            };
            let request = KillJobWorkersRequest {
                job_id: job.to_vec(),
                owner_tag,
            };
            match raylet.kill_job_workers(request).await {
                Ok(reply) if reply.get_ref().killed > 0 => {
                    info!(job = %job, %address, killed = reply.get_ref().killed, "killed the job's workers");
                }
                Ok(_) => {}
                Err(status) => {
                    warn!(job = %job, %address, error = status.message(), "cannot kill the job's workers");
                }
            }
            // After its workers: none of them can store another object now.
            let request = FreeJobObjectsRequest {
                job_id: job.to_vec(),
                owner_tag,
                keep: keep.iter().map(ObjectId::to_vec).collect(),
            };
            if let Err(status) = raylet.free_job_objects(request).await {
                warn!(job = %job, %address, error = status.message(), "cannot free the job's objects");
            }
        }
        self.objects.drop_owned(job, owner_tag, keep);
        let dropped = self.lineage.remove_owned(job, owner_tag);
        if !dropped.is_empty() {
            let persistence = self.persistence.clone();
            let removed =
                tokio::task::spawn_blocking(move || persistence.update_lineage(&[], &dropped))
                    .await;
            if !matches!(removed, Ok(Ok(()))) {
                warn!(job = %job, "cannot remove the job's lineage from disk: a restarted head would load it again");
            }
        }
    }
}

pub(crate) fn unknown_job(id: &str) -> Status {
    Status::not_found(format!(
        "no job {id:?} on this cluster; `photon job list` shows its jobs"
    ))
}

/// Sends `signal` to the process group led by `pid` (the driver's `sh`).
fn signal_group(pid: u32, signal: Signal) {
    // ESRCH: the group is gone already, which is what we want.
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}

/// Starts job `id`'s driver and waits for it.
async fn supervise(state: Arc<HeadState>, id: String) {
    let Some(record) = state.jobs.get(&id) else {
        return;
    };
    if record.stop_requested {
        state
            .finish_job(
                &id,
                JobState::Stopped,
                None,
                "stopped before it started".into(),
            )
            .await;
        return;
    }
    let mut child = match start_driver(&state, &record).await {
        Ok(child) => child,
        Err(message) => {
            state.finish_job(&id, JobState::Failed, None, message).await;
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    let ticks = process_started(pid).unwrap_or(0);
    if let Some(running) = state.jobs.update(&id, |r| {
        r.state = JobState::Running as i32;
        r.driver_pid = pid;
        r.driver_start_ticks = ticks;
        r.started_at_unix_ms = now_ms();
    }) {
        state.save_job(running).await;
    }
    info!(job = %id, pid, "job's driver started");
    // A stop that came while the driver was being started.
    if state.jobs.get(&id).is_some_and(|r| r.stop_requested) {
        state.stop_job_now(&id, DEFAULT_GRACE);
    }
    // Whether the job stops because the head shuts down (not on request):
    // its end then says so, and the operator may run it again.
    let mut head_shut_down = false;
    let status = tokio::select! {
        status = child.wait() => status,
        () = state.cancel.cancelled() => {
            // The head shuts down cleanly: its jobs stop with it.
            head_shut_down = !state.jobs.get(&id).is_some_and(|r| r.stop_requested);
            state.jobs.update(&id, |r| r.stop_requested = true);
            signal_group(pid, Signal::SIGTERM);
            match tokio::time::timeout(DEFAULT_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    signal_group(pid, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    let ending = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Code(code),
            (None, Some(signal)) => Ending::Signal(signal),
            (None, None) => Ending::Unknown,
        },
        Err(err) => {
            warn!(job = %id, %err, "cannot wait for the driver");
            Ending::Unknown
        }
    };
    let stop_requested = state.jobs.get(&id).is_some_and(|r| r.stop_requested);
    let (final_state, message) = match head_shut_down {
        true => (JobState::Stopped, STOPPED_BY_SHUTDOWN.to_string()),
        false => verdict(ending, stop_requested),
    };
    state
        .finish_job(&id, final_state, ending.exit_code(), message)
        .await;
}

/// The end of a job the head stopped because it shut down.
pub const STOPPED_BY_SHUTDOWN: &str = "stopped: the head shut down";

/// Spawns the driver: `sh` running the program in the job's working
/// directory, output appended to the job's log, in a process group of its own.
async fn start_driver(
    state: &Arc<HeadState>,
    record: &JobRecord,
) -> Result<tokio::process::Child, String> {
    let dir = state.job_dir(&record.job_id);
    let work = dir.join("work");
    if !record.working_dir_package.is_empty() {
        let archive = state
            .packages
            .path(&record.working_dir_package)
            .ok_or("bad working directory package")?;
        let target = work.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive)?;
            tar::Archive::new(file).unpack(&target)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "cannot unpack the working directory into {}: {e}",
                work.display()
            )
        })?;
    }
    let program = if record.program_package.is_empty() {
        record.program.clone()
    } else {
        state
            .packages
            .path(&record.program_package)
            .ok_or("bad program package")?
            .display()
            .to_string()
    };
    let log_path = dir.join("job.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open the job log {}: {e}", log_path.display()))?;
    let stderr = log
        .try_clone()
        .map_err(|e| format!("cannot open the job log {}: {e}", log_path.display()))?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(DRIVER_SCRIPT)
        .arg(format!("photon-job-{}", record.job_id))
        .arg(&program)
        .args(&record.args)
        .current_dir(&work)
        .envs(&record.env)
        .env(env::ADDRESS, &state.address)
        .env(env::TOKEN, &state.token)
        .envs(photon_proto::tls::child_env())
        .env(env::JOB_ID, &record.job_id)
        .env(env::JOB_DIR, &dir)
        .env_remove("PHOTON_WORKER")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Its own group, so a stop reaches everything the driver started.
        .process_group(0);
    if !record.program_package.is_empty() {
        command.env(env::PROGRAM_PACKAGE, &record.program_package);
    }
    if !record.working_dir_package.is_empty() {
        command.env(env::WORKING_DIR_PACKAGE, &record.working_dir_package);
    }
    command
        .spawn()
        .map_err(|e| {
            format!("cannot start the driver {program} under sh (a POSIX shell must be on the head node's PATH): {e}")
        })
}

/// Waits for a driver the head adopted after a restart.
async fn watch_adopted(state: Arc<HeadState>, id: String) {
    let mut ticks = tokio::time::interval(ADOPTED_POLL);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(record) = state.jobs.get(&id) else {
            return;
        };
        if process_started(record.driver_pid) != Some(record.driver_start_ticks) {
            let ending = state.recorded_ending(&id);
            let (final_state, message) = verdict(ending, record.stop_requested);
            state
                .finish_job(&id, final_state, ending.exit_code(), message)
                .await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_name_codes_and_signals() {
        assert_eq!(verdict(Ending::Code(0), false).0, JobState::Succeeded);
        let (state, message) = verdict(Ending::Code(3), false);
        assert_eq!(state, JobState::Failed);
        assert_eq!(message, "the driver exited with code 3");
        let (_, message) = verdict(Ending::Code(137), false);
        assert_eq!(message, "the driver was killed by SIGKILL (exit code 137)");
        let (state, message) = verdict(Ending::Signal(9), true);
        assert_eq!(state, JobState::Stopped);
        assert!(message.contains("grace period"), "{message}");
        assert_eq!(Ending::Signal(15).exit_code(), Some(143));
        assert_eq!(verdict(Ending::Unknown, false).0, JobState::Failed);
    }

    #[test]
    fn start_ticks_tell_this_process_and_last_lines_read_the_tail() {
        let me = std::process::id();
        assert!(process_started(me).is_some());
        assert_eq!(process_started(me), process_started(me));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let lines = last_lines(&path, 3);
        assert_eq!(lines, ["line 27", "line 28", "line 29"]);
        assert!(last_lines(&dir.path().join("missing"), 3).is_empty());
    }
}
