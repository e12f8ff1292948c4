//! The node's worker processes: started from a job's binary (or any program)
//! with worker-mode environment, prestarted and reused, reaped when they die
//! with the reason told to whoever cares (exit code, signal, or killed for
//! memory), and watched by a memory monitor that kills a worker over its limit
//! — or the largest one when the node runs out — and says so. (Silent OOM
//! kills are Ray users' top complaint.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use photon_proto::{NodeId, WorkerId};
use tokio::process::Command;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::procfs;

/// Environment variables a worker process is started with.
pub mod env {
    /// Set to `1`: the process is a worker, not a driver (`#[photon::main]` routes on it).
    pub const WORKER: &str = "PHOTON_WORKER";
    /// The worker's id.
    pub const WORKER_ID: &str = "PHOTON_WORKER_ID";
    /// The node's id.
    pub const NODE_ID: &str = "PHOTON_NODE_ID";
    /// Where the worker reaches its raylet.
    pub const RAYLET_ADDRESS: &str = "PHOTON_RAYLET_ADDRESS";
    /// The cluster token the worker presents (and requires from drivers).
    pub const TOKEN: &str = "PHOTON_TOKEN";
    /// Where the worker reaches the head (to submit nested tasks and own objects).
    pub const HEAD_ADDRESS: &str = "PHOTON_HEAD_ADDRESS";
}

/// What to start. Workers are reused only for an identical spec (same
/// program, arguments and environment, so GPU assignments never leak).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment, e.g. `CUDA_VISIBLE_DEVICES`.
    pub env: BTreeMap<String, String>,
}

/// How long an idle worker is kept by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a pool is set up.
#[derive(Debug, Clone)]
pub struct WorkerPoolConfig {
    /// This node.
    pub node_id: NodeId,
    /// The raylet's address, given to workers.
    pub raylet_address: String,
    /// Where each worker's stdout and stderr go (`worker-<id>.out` / `.err`).
    pub log_dir: PathBuf,
    /// A worker whose private memory (anonymous RSS) exceeds this is killed.
    pub worker_memory_limit: Option<u64>,
    /// When the node's used memory exceeds this fraction, the worker with
    /// the most private memory is killed.
    pub node_memory_threshold: f64,
    /// Where the cgroup v2 hierarchy is: a container's `memory.max` caps the
    /// node below the host's memory.
    pub cgroup_root: PathBuf,
    /// How often the memory monitor (and the idle reaper) looks.
    pub monitor_period: Duration,
    /// An idle worker is stopped after this long unused, so a long-running
    /// node's worker count stays bounded.
    pub idle_timeout: Duration,
    /// The cluster token, given to workers.
    pub token: String,
    /// The head's address, given to workers.
    pub head_address: String,
}

impl WorkerPoolConfig {
    /// Defaults: no per-worker limit, node threshold 95%, checked every
    /// 250 ms; idle workers stopped after [`DEFAULT_IDLE_TIMEOUT`].
    pub fn new(
        node_id: NodeId,
        raylet_address: impl Into<String>,
        log_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id,
            raylet_address: raylet_address.into(),
            log_dir: log_dir.into(),
            worker_memory_limit: None,
            node_memory_threshold: 0.95,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            monitor_period: Duration::from_millis(250),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            token: String::new(),
            head_address: String::new(),
        }
    }
}

/// Why a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself.
    Exited(i32),
    /// A signal ended it (not one the pool sent for memory).
    Signaled(i32),
    /// The memory monitor killed it.
    KilledForMemory {
        /// Its private resident memory (anonymous RSS) when killed.
        rss: u64,
        /// What was exceeded, in words.
        why: String,
    },
    /// The pool stopped it after it sat idle this long.
    Idle(Duration),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::Signaled(signal) => {
                let name = Signal::try_from(*signal)
                    .map_or_else(|_| "unknown".to_string(), |s| s.to_string());
                write!(f, "killed by signal {signal} ({name})")
            }
            Self::KilledForMemory { rss, why } => {
                write!(
                    f,
                    "killed for memory: private resident {} MiB, {why}",
                    rss >> 20
                )
            }
            Self::Idle(after) => write!(f, "stopped after {after:?} idle"),
        }
    }
}

/// A worker that ended, as broadcast to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// Why it ended.
    pub reason: ExitReason,
}

/// A leased worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// The worker's id.
    pub id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// What it runs.
    pub spec: WorkerSpec,
}

/// Error starting a worker.
#[derive(Debug, thiserror::Error)]
#[error("cannot start worker {program}: {source}")]
pub struct SpawnError {
    /// The program.
    pub program: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

#[derive(Default)]
struct PoolState {
    live: HashMap<WorkerId, Worker>,
    /// Idle workers by what they run, with when each became idle.
    idle: BTreeMap<WorkerSpec, Vec<(WorkerId, Instant)>>,
    /// Why the pool kills a worker, set just before it does.
    kill_reasons: HashMap<WorkerId, ExitReason>,
    exits: HashMap<WorkerId, ExitReason>,
}

/// The node's worker processes.
pub struct WorkerPool {
    config: WorkerPoolConfig,
    state: Arc<Mutex<PoolState>>,
    exits: broadcast::Sender<WorkerExit>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl WorkerPool {
    /// A pool with its memory monitor running. Call from a tokio runtime.
    pub fn start(config: WorkerPoolConfig) -> Arc<Self> {
        let (exits, _) = broadcast::channel(256);
        let pool = Arc::new(Self {
            config,
            state: Arc::default(),
            exits,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        });
        pool.tasks.spawn(monitor(
            Arc::downgrade(&pool),
            pool.cancel.clone(),
            pool.config.monitor_period,
        ));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Receives every worker exit from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkerExit> {
        self.exits.subscribe()
    }

    /// Why a worker ended, once it has.
    pub fn exit_reason(&self, worker: WorkerId) -> Option<ExitReason> {
        self.lock().exits.get(&worker).cloned()
    }

    /// Live workers (leased and idle).
    pub fn live(&self) -> Vec<Worker> {
        self.lock().live.values().cloned().collect()
    }

    /// Idle workers for `spec`.
    pub fn idle_count(&self, spec: &WorkerSpec) -> usize {
        self.lock().idle.get(spec).map_or(0, Vec::len)
    }

    /// Starts `count` workers for `spec` ahead of demand, so a lease needs no
    /// process start.
    pub fn prestart(&self, spec: &WorkerSpec, count: usize) -> Result<(), SpawnError> {
        for _ in 0..count {
            let worker = self.spawn(spec)?;
            self.lock()
                .idle
                .entry(spec.clone())
                .or_default()
                .push((worker.id, Instant::now()));
        }
        Ok(())
    }

    /// An idle worker for `spec` if one is alive, else a new one.
    pub fn lease(&self, spec: &WorkerSpec) -> Result<Worker, SpawnError> {
        {
            let mut state = self.lock();
            while let Some((id, _)) = state.idle.get_mut(spec).and_then(Vec::pop) {
                if let Some(worker) = state.live.get(&id) {
                    return Ok(worker.clone());
                }
            }
        }
        self.spawn(spec)
    }

    /// Returns a leased worker for reuse (ignored if it has died).
    pub fn release(&self, worker: &Worker) {
        let mut state = self.lock();
        if state.live.contains_key(&worker.id) {
            state
                .idle
                .entry(worker.spec.clone())
                .or_default()
                .push((worker.id, Instant::now()));
        }
    }

    /// Live workers of job `job` (by the job id in their environment) but
    /// those `spare` keeps. `spare` runs after the pool's lock is released:
    /// it may take other locks (the actor host's), which are held while the
    /// pool's is taken.
    pub fn job_workers(&self, job: &str, spare: impl Fn(WorkerId) -> bool) -> Vec<Worker> {
        let of_job: Vec<Worker> = self
            .lock()
            .live
            .values()
            .filter(|w| {
                w.spec
                    .env
                    .get(crate::worker_logs::JOB_ID_ENV)
                    .map(String::as_str)
                    == Some(job)
            })
            .cloned()
            .collect();
        of_job.into_iter().filter(|w| !spare(w.id)).collect()
    }

    /// Kills every live worker of job `job` but those `spare` keeps;
    /// returns how many.
    pub fn kill_job(&self, job: &str, spare: impl Fn(WorkerId) -> bool) -> u32 {
        let victims: Vec<u32> = self.job_workers(job, spare).iter().map(|w| w.pid).collect();
        for &pid in &victims {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        victims.len() as u32
    }

    /// Workers that ended since start, by how: `exited`, `signaled`, `oom`, `idle`.
    pub fn exit_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::from([("exited", 0), ("signaled", 0), ("oom", 0), ("idle", 0)]);
        for reason in self.lock().exits.values() {
            let kind = match reason {
                ExitReason::Exited(_) => "exited",
                ExitReason::Signaled(_) => "signaled",
                ExitReason::KilledForMemory { .. } => "oom",
                ExitReason::Idle(_) => "idle",
            };
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }

    /// Sends SIGKILL to a worker; its exit is reaped and broadcast as usual.
    pub fn kill(&self, worker: WorkerId) {
        if let Some(pid) = self.lock().live.get(&worker).map(|w| w.pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    fn spawn(&self, spec: &WorkerSpec) -> Result<Worker, SpawnError> {
        let id = WorkerId::random();
        let error = |source| SpawnError {
            program: spec.program.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.config.log_dir).map_err(error)?;
        let stdout = std::fs::File::create(self.config.log_dir.join(format!("worker-{id}.out")))
            .map_err(error)?;
        let stderr = std::fs::File::create(self.config.log_dir.join(format!("worker-{id}.err")))
            .map_err(error)?;
        let mut command = Command::new(&spec.program);
        // The job's working directory, unpacked on this node (`packages`).
        if let Some(dir) = spec.env.get(crate::packages::WORKING_DIR_ENV) {
            command.current_dir(dir);
        }
        // A worker must not outlive its raylet (a kill -9'd raylet would leave
        // it holding GPUs): the kernel kills it when the spawning thread's
        // process goes. PDEATHSIG follows the *thread* that forked, so spawn
        // only from runtime worker threads, which live as long as the raylet.
        // SAFETY: between fork and exec the closure only calls prctl(2),
        // which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .args(&spec.args)
            .envs(&spec.env)
            .env(env::WORKER, "1")
            .env(env::WORKER_ID, id.to_string())
            .env(env::NODE_ID, self.config.node_id.to_string())
            .env(env::RAYLET_ADDRESS, &self.config.raylet_address)
            .env(env::TOKEN, &self.config.token)
            .env(env::HEAD_ADDRESS, &self.config.head_address)
            .envs(photon_proto::tls::child_env())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(error)?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let worker = Worker {
            id,
            pid,
            spec: spec.clone(),
        };
        self.lock().live.insert(id, worker.clone());
        let state = self.state.clone();
        let exits = self.exits.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = cancel.cancelled() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let mut state = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.live.remove(&id);
            let reason = state
                .kill_reasons
                .remove(&id)
                .unwrap_or_else(|| match status {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => ExitReason::Exited(code),
                        (None, Some(signal)) => ExitReason::Signaled(signal),
                        (None, None) => ExitReason::Exited(-1),
                    },
                    Err(err) => {
                        warn!(worker = %id, %err, "cannot wait for worker");
                        ExitReason::Exited(-1)
                    }
                });
            info!(worker = %id, pid, %reason, "worker ended");
            state.exits.insert(id, reason.clone());
            drop(state);
            let _ = exits.send(WorkerExit {
                worker_id: id,
                pid,
                reason,
            });
        });
        Ok(worker)
    }

    /// Kills workers over their limit, or the one with the most private
    /// memory when the node (or its cgroup) is short. Shared store pages a
    /// worker maps do not count: killing it would not free them.
    fn check_memory(&self) {
        let workers: Vec<(WorkerId, u32, u64)> = self
            .live()
            .into_iter()
            .filter_map(|w| Some((w.id, w.pid, procfs::private_bytes(w.pid)?)))
            .collect();
        let mut victims: Vec<(WorkerId, u32, ExitReason)> = Vec::new();
        if let Some(limit) = self.config.worker_memory_limit {
            for &(id, pid, rss) in &workers {
                if rss > limit {
                    let why = format!("over the worker memory limit of {} MiB", limit >> 20);
                    victims.push((id, pid, ExitReason::KilledForMemory { rss, why }));
                }
            }
        }
        if victims.is_empty()
            && let Some(memory) = procfs::node_memory(&self.config.cgroup_root)
            && memory.fraction() > self.config.node_memory_threshold
            && let Some(&(id, pid, rss)) = workers.iter().max_by_key(|(_, _, rss)| *rss)
        {
            let why = format!(
                "the node's memory ({}) was {:.0}% used, {} of {} MiB (threshold {:.0}%), and \
                 this was the largest worker by private memory",
                memory.source,
                memory.fraction() * 100.0,
                memory.used >> 20,
                memory.limit >> 20,
                self.config.node_memory_threshold * 100.0
            );
            victims.push((id, pid, ExitReason::KilledForMemory { rss, why }));
        }
        for (id, pid, reason) in victims {
            warn!(worker = %id, pid, %reason, "memory monitor kills worker");
            self.lock().kill_reasons.insert(id, reason);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Stops workers idle for longer than the idle timeout (the newest idle
    /// worker of a kind is reused first, so the oldest go).
    fn stop_idle(&self) {
        let timeout = self.config.idle_timeout;
        let mut state = self.lock();
        let mut stale = Vec::new();
        for workers in state.idle.values_mut() {
            workers.retain(|&(id, since)| {
                let keep = since.elapsed() < timeout;
                if !keep {
                    stale.push(id);
                }
                keep
            });
        }
        state.idle.retain(|_, workers| !workers.is_empty());
        for id in stale {
            let Some(pid) = state.live.get(&id).map(|w| w.pid) else {
                continue;
            };
            info!(worker = %id, pid, "stopping an idle worker");
            state.kill_reasons.insert(id, ExitReason::Idle(timeout));
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Kills every worker and waits until all are reaped.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Every `period`: the memory check, and idle workers stopped.
async fn monitor(pool: std::sync::Weak<WorkerPool>, cancel: CancellationToken, period: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(pool) = pool.upgrade() else { return };
        tokio::task::spawn_blocking(move || {
            pool.stop_idle();
            pool.check_memory();
        })
        .await
        .ok();
    }
}
