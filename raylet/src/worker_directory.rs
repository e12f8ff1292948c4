//! Where each worker process serves `photon.v1.Worker`, and which actors have
//! finished their constructors. A worker registers once its service listens;
//! an actor worker then reports its constructor's outcome. Leases and
//! `ConnectActor` wait here, and learn at once when the worker dies instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::{ActorId, WorkerId};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tonic::Status;

use crate::worker_pool::WorkerPool;

/// How long a new worker may take to start and register.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

enum Construction {
    Ready { worker: WorkerId, address: String },
    Failed { worker: WorkerId, error: String },
}

#[derive(Default)]
struct Directory {
    addresses: HashMap<WorkerId, String>,
    actors: HashMap<ActorId, Construction>,
}

/// The node's worker registrations.
pub struct WorkerDirectory {
    state: Mutex<Directory>,
    /// Bumped on every change (registrations, constructions, worker exits).
    version: watch::Sender<u64>,
    pool: Arc<WorkerPool>,
}

impl WorkerDirectory {
    /// A directory that forgets workers as `pool` reaps them.
    pub fn start(pool: Arc<WorkerPool>) -> Arc<Self> {
        let directory = Arc::new(Self {
            state: Mutex::default(),
            version: watch::Sender::new(0),
            pool,
        });
        let mut exits = directory.pool.subscribe();
        let weak = Arc::downgrade(&directory);
        tokio::spawn(async move {
            loop {
                let exit = match exits.recv().await {
                    Ok(exit) => Some(exit),
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                };
                let Some(directory) = weak.upgrade() else {
                    return;
                };
                if let Some(exit) = exit {
                    directory.lock().addresses.remove(&exit.worker_id);
                }
                directory.bump();
            }
        });
        directory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A worker's service listens at `address`.
    pub fn register(&self, worker: WorkerId, address: String) {
        self.lock().addresses.insert(worker, address);
        self.bump();
    }

    /// An actor's constructor finished (`error` empty) or failed.
    pub fn actor_constructed(&self, actor: ActorId, worker: WorkerId, error: String) {
        let mut state = self.lock();
        let construction = if error.is_empty() {
            let Some(address) = state.addresses.get(&worker).cloned() else {
                return; // the worker died meanwhile
            };
            Construction::Ready { worker, address }
        } else {
            Construction::Failed { worker, error }
        };
        state.actors.insert(actor, construction);
        drop(state);
        self.bump();
    }

    fn died(&self, worker: WorkerId) -> Option<Status> {
        self.pool.exit_reason(worker).map(|reason| {
            Status::unavailable(format!(
                "worker {worker} {reason} (its output is in worker-{worker}.out/.err in the session's log directory)"
            ))
        })
    }

    /// Waits until `worker` has registered; fails when it dies first or
    /// takes longer than [`REGISTER_TIMEOUT`].
    pub async fn wait_registered(&self, worker: WorkerId) -> Result<String, Status> {
        let mut version = self.version.subscribe();
        let wait = async {
            loop {
                if let Some(address) = self.lock().addresses.get(&worker) {
                    return Ok(address.clone());
                }
                if let Some(status) = self.died(worker) {
                    return Err(status);
                }
                if version.changed().await.is_err() {
                    return Err(Status::unavailable("the raylet is stopping"));
                }
            }
        };
        tokio::time::timeout(REGISTER_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "worker {worker} did not register within {REGISTER_TIMEOUT:?}: does its program call photon::worker_entry() (or use #[photon::main]) first thing in main?"
                )))
            })
    }

    /// Waits until the actor's constructor has run in `worker` (the worker
    /// the node started for it) and returns the worker's address.
    pub async fn wait_constructed(
        &self,
        actor: ActorId,
        worker: WorkerId,
    ) -> Result<String, Status> {
        let mut version = self.version.subscribe();
        loop {
            if let Some(status) = self.died(worker) {
                return Err(status);
            }
            match self.lock().actors.get(&actor) {
                Some(Construction::Ready { worker: w, address }) if *w == worker => {
                    return Ok(address.clone());
                }
                Some(Construction::Failed { worker: w, error }) if *w == worker => {
                    return Err(Status::failed_precondition(format!(
                        "actor {actor}: its constructor failed: {error}"
                    )));
                }
                _ => {}
            }
            if version.changed().await.is_err() {
                return Err(Status::unavailable("the raylet is stopping"));
            }
        }
    }

    /// Forgets an actor whose worker ended.
    pub fn forget_actor(&self, actor: ActorId) {
        self.lock().actors.remove(&actor);
    }
}
