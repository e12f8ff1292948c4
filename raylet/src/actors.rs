//! Actors on this node: the resources each holds (GPU instances picked best
//! fit, so quarter-GPU actors share one GPU before opening the next) and the
//! worker process that runs it. When a worker ends, its resources come back
//! and the head hears why.

use crate::demand::Demand;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use photon_proto::v1::{ActorExit, ActorSpec, RunningActor, StartActorReply};
use photon_proto::{ActorId, NodeId, Quantity, ResourceSet, WorkerId, names};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tracing::{info, warn};

use crate::gpu::{GpuGrant, GpuPool};
use crate::head_link::HeadLink;
use crate::worker_pool::{Worker, WorkerPool, WorkerSpec};

/// Environment variable naming the actor a worker runs.
pub const ACTOR_ID_ENV: &str = "PHOTON_ACTOR_ID";

/// Resources taken from the node for an actor or a task lease.
#[derive(Debug)]
pub struct Reservation {
    /// Everything but GPUs.
    others: ResourceSet,
    /// GPU instances, when the request has GPUs.
    grant: Option<GpuGrant>,
    /// `CUDA_VISIBLE_DEVICES` for the grant (empty without GPUs).
    pub devices: String,
}

struct Running {
    worker: Worker,
    reservation: Reservation,
    spec: ActorSpec,
}

impl Running {
    fn reply(&self) -> StartActorReply {
        StartActorReply {
            worker_id: self.worker.id.to_vec(),
            pid: self.worker.pid,
            cuda_visible_devices: self.reservation.devices.clone(),
        }
    }
}

struct Ledger {
    /// Free resources other than GPUs (GPUs are tracked per instance).
    available: ResourceSet,
    gpus: GpuPool,
    actors: HashMap<ActorId, Running>,
    /// Constructor failures reported by actor workers, until their exit is reported.
    constructor_errors: HashMap<WorkerId, String>,
}

/// The actors this node runs.
pub struct ActorHost {
    total: ResourceSet,
    ledger: Mutex<Ledger>,
    freed: Notify,
    pool: Arc<WorkerPool>,
    demand: Demand,
}

impl ActorHost {
    /// A host with `total` resources and GPU instances `gpu_ids`.
    pub fn new(total: &ResourceSet, gpu_ids: Vec<String>, pool: Arc<WorkerPool>) -> Self {
        let mut available = total.clone();
        available.set(names::GPU, Quantity::ZERO);
        Self {
            total: total.clone(),
            freed: Notify::new(),
            ledger: Mutex::new(Ledger {
                available,
                gpus: GpuPool::new(gpu_ids),
                actors: HashMap::new(),
                constructor_errors: HashMap::new(),
            }),
            pool,
            demand: Demand::default(),
        }
    }

    /// Lease requests waiting for this node's resources.
    pub fn demand(&self) -> &Demand {
        &self.demand
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is free now, GPUs included, for heartbeats.
    pub fn available(&self) -> ResourceSet {
        let ledger = self.lock();
        let mut available = ledger.available.clone();
        available.set(names::GPU, ledger.gpus.free_total());
        // Oversubscribed by a resumed worker: nothing is free.
        let cpus = available.get(names::CPU).max(Quantity::ZERO);
        available.set(names::CPU, cpus);
        available
    }

    /// The actors running here, for registration.
    pub fn running(&self) -> Vec<RunningActor> {
        self.lock()
            .actors
            .iter()
            .map(|(id, running)| RunningActor {
                actor_id: id.to_vec(),
                worker_id: running.worker.id.to_vec(),
                pid: running.worker.pid,
                cuda_visible_devices: running.reservation.devices.clone(),
            })
            .collect()
    }

    /// The node's total resources.
    pub fn total(&self) -> &ResourceSet {
        &self.total
    }

    /// Takes `request` from the node's free resources (GPU instances best
    /// fit), or says what is short (RESOURCE_EXHAUSTED).
    pub fn reserve(&self, request: &ResourceSet) -> Result<Reservation, Status> {
        let mut ledger = self.lock();
        Self::reserve_locked(&mut ledger, request)
    }

    fn reserve_locked(ledger: &mut Ledger, request: &ResourceSet) -> Result<Reservation, Status> {
        let mut others = request.clone();
        others.set(names::GPU, Quantity::ZERO);
        if let Some((name, wanted, free)) = ledger.available.shortfall(&others) {
            return Err(Status::resource_exhausted(format!(
                "needs {name} {wanted}, this node has {free} free"
            )));
        }
        let gpu_request = request.get(names::GPU);
        let grant = if gpu_request > Quantity::ZERO {
            Some(
                ledger
                    .gpus
                    .allocate(gpu_request)
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?,
            )
        } else {
            None
        };
        let devices = grant
            .as_ref()
            .map(|g| ledger.gpus.visible_devices(g))
            .unwrap_or_default();
        ledger.available.subtract(&others);
        Ok(Reservation {
            others,
            grant,
            devices,
        })
    }

    /// Gives a reservation's resources back and wakes whoever waits for them.
    pub fn unreserve(&self, reservation: &Reservation) {
        Self::unreserve_locked(&mut self.lock(), reservation);
        self.freed.notify_waiters();
    }

    fn unreserve_locked(ledger: &mut Ledger, reservation: &Reservation) {
        ledger.available.add(&reservation.others);
        if let Some(grant) = &reservation.grant {
            ledger.gpus.release(grant);
        }
    }

    /// A leased worker blocked on objects lends the CPUs of `reservation`
    /// back to the node until [`reclaim_cpus`](Self::reclaim_cpus).
    pub fn lend_cpus(&self, reservation: &Reservation) {
        self.shift_cpus(reservation, true);
        self.freed.notify_waiters();
    }

    /// Takes lent CPUs back when the worker resumes, even if that
    /// oversubscribes the node until something ends (as Ray does): a waiting
    /// task must not wait again for the tasks it was waiting on.
    pub fn reclaim_cpus(&self, reservation: &Reservation) {
        self.shift_cpus(reservation, false);
    }

    fn shift_cpus(&self, reservation: &Reservation, lend: bool) {
        let cpus = reservation.others.get(names::CPU);
        let mut ledger = self.lock();
        let free = ledger.available.get(names::CPU);
        let free = if lend { free + cpus } else { free - cpus };
        ledger.available.set(names::CPU, free);
    }

    /// Notified whenever resources come back.
    pub fn freed(&self) -> &Notify {
        &self.freed
    }

    /// The worker running an actor here.
    pub fn worker_of_actor(&self, actor: ActorId) -> Option<WorkerId> {
        self.lock()
            .actors
            .get(&actor)
            .map(|running| running.worker.id)
    }

    /// An actor's constructor failed in `worker`: its exit report will say so
    /// (the worker exits next).
    pub fn constructor_failed(&self, worker: WorkerId, error: &str) {
        self.lock()
            .constructor_errors
            .insert(worker, error.to_string());
    }

    /// Whether `worker` runs a detached actor (which outlives its job).
    pub fn hosts_detached(&self, worker: WorkerId) -> bool {
        self.actor_of_worker(worker)
            .is_some_and(|spec| spec.detached)
    }

    /// The spec of the actor a worker runs, if it runs one.
    pub fn actor_of_worker(&self, worker: WorkerId) -> Option<ActorSpec> {
        self.lock()
            .actors
            .values()
            .find(|running| running.worker.id == worker)
            .map(|running| running.spec.clone())
    }

    /// Reserves the actor's resources and starts its worker.
    pub fn start(&self, spec: &ActorSpec) -> Result<StartActorReply, Status> {
        let id = ActorId::from_slice(&spec.actor_id)?;
        let request = ResourceSet::from_proto(&spec.resources);
        let mut ledger = self.lock();
        if let Some(running) = ledger.actors.get(&id) {
            // The head retried a start whose reply it lost: same answer.
            return Ok(running.reply());
        }
        let reservation = Self::reserve_locked(&mut ledger, &request)?;
        let mut env: std::collections::BTreeMap<String, String> =
            spec.env.clone().into_iter().collect();
        env.insert(ACTOR_ID_ENV.into(), id.to_string());
        // An actor without GPUs sees none, rather than every GPU of the node.
        env.insert("CUDA_VISIBLE_DEVICES".into(), reservation.devices.clone());
        let worker_spec = WorkerSpec {
            program: PathBuf::from(&spec.program),
            args: spec.args.clone(),
            env,
        };
        let worker = match self.pool.lease(&worker_spec) {
            Ok(worker) => worker,
            Err(err) => {
                Self::unreserve_locked(&mut ledger, &reservation);
                return Err(Status::failed_precondition(err.to_string()));
            }
        };
        info!(actor = %id, worker = %worker.id, pid = worker.pid, gpus = %reservation.devices, "actor started");
        let running = Running {
            worker,
            reservation,
            spec: spec.clone(),
        };
        let reply = running.reply();
        ledger.actors.insert(id, running);
        Ok(reply)
    }

    /// Kills an actor's worker; its exit is reported like any other.
    pub fn stop(&self, id: ActorId) -> Result<(), Status> {
        let worker = self.lock().actors.get(&id).map(|r| r.worker.id);
        let worker = worker
            .ok_or_else(|| Status::not_found(format!("actor {id} does not run on this node")))?;
        self.pool.kill(worker);
        Ok(())
    }

    /// Returns resources of actors whose workers end and tells the head why;
    /// runs until the pool stops.
    pub async fn watch_exits(self: Arc<Self>, node_id: NodeId, head: Arc<HeadLink>) {
        let mut exits = self.pool.subscribe();
        loop {
            let exit = match exits.recv().await {
                Ok(exit) => exit,
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "missed worker exits");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let (ended, constructor_error) = {
                let mut ledger = self.lock();
                let constructor_error = ledger.constructor_errors.remove(&exit.worker_id);
                let actor = ledger
                    .actors
                    .iter()
                    .find(|(_, r)| r.worker.id == exit.worker_id)
                    .map(|(id, _)| *id);
                let ended = actor
                    .and_then(|id| ledger.actors.remove(&id).map(|running| (id, running)))
                    .map(|(id, running)| {
                        Self::unreserve_locked(&mut ledger, &running.reservation);
                        id
                    });
                (ended, constructor_error)
            };
            self.freed.notify_waiters();
            let Some(actor) = ended else { continue };
            let report = ActorExit {
                actor_id: actor.to_vec(),
                node_id: node_id.to_vec(),
                worker_id: exit.worker_id.to_vec(),
                reason: match constructor_error {
                    Some(error) => format!("its constructor failed: {error}"),
                    None => format!("its worker (pid {}) {}", exit.pid, exit.reason),
                },
            };
            if let Err(status) = head.report_actor_exit(report).await {
                warn!(%actor, error = status.message(), "cannot tell the head that an actor ended");
            }
        }
    }
}
