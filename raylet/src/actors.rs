//! Actors on this node: the resources each holds (GPU instances picked best
//! fit, so quarter-GPU actors share one GPU before opening the next) and the
//! worker process that runs it. When a worker ends, its resources come back
//! and the head hears why.

use crate::demand::Demand;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use photon_proto::v1::BundleRef;
use photon_proto::v1::{ActorExit, ActorSpec, RunningActor, StartActorReply};
use photon_proto::{ActorId, NodeId, PlacementGroupId, Quantity, ResourceSet, WorkerId, names};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tracing::{info, warn};

use crate::gpu::{GpuGrant, GpuPool};
use crate::head_link::HeadLink;
use crate::worker_pool::{Worker, WorkerPool, WorkerSpec};

/// The key of a bundle named in a request.
pub fn bundle_key(bundle: &BundleRef) -> Result<BundleKey, Status> {
    Ok((
        PlacementGroupId::from_slice(&bundle.group_id)?,
        bundle.bundle_index,
    ))
}

/// Environment variable naming the actor a worker runs.
pub const ACTOR_ID_ENV: &str = "PHOTON_ACTOR_ID";

/// A placement group's bundle: the group and the bundle's index.
pub type BundleKey = (PlacementGroupId, u32);

/// Resources taken from the node (or from a placement group bundle on it)
/// for an actor, a task lease or a bundle.
#[derive(Debug)]
pub struct Reservation {
    /// Everything but GPUs.
    others: ResourceSet,
    /// GPU instances, when the request has GPUs.
    grant: Option<GpuGrant>,
    /// `CUDA_VISIBLE_DEVICES` for the grant (empty without GPUs).
    pub devices: String,
    /// The bundle it was taken from (`None`: the node's free resources).
    pub bundle: Option<BundleKey>,
}

/// Free resources to reserve from: the node's, or a bundle's.
#[derive(Debug)]
struct Pool {
    /// Free resources other than GPUs (GPUs are tracked per instance).
    available: ResourceSet,
    gpus: GpuPool,
}

impl Pool {
    /// Takes `request` (GPU instances best fit); `whose` names the pool in errors.
    fn reserve(&mut self, request: &ResourceSet, whose: &str) -> Result<Reservation, Status> {
        let mut others = request.clone();
        others.set(names::GPU, Quantity::ZERO);
        if let Some((name, wanted, free)) = self.available.shortfall(&others) {
            return Err(Status::resource_exhausted(format!(
                "needs {name} {wanted}, {whose} has {free} free"
            )));
        }
        let gpu_request = request.get(names::GPU);
        let grant = if gpu_request > Quantity::ZERO {
            Some(
                self.gpus
                    .allocate(gpu_request)
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?,
            )
        } else {
            None
        };
        let devices = grant
            .as_ref()
            .map(|g| self.gpus.visible_devices(g))
            .unwrap_or_default();
        self.available.subtract(&others);
        Ok(Reservation {
            others,
            grant,
            devices,
            bundle: None,
        })
    }

    fn unreserve(&mut self, reservation: &Reservation) {
        self.available.add(&reservation.others);
        if let Some(grant) = &reservation.grant {
            self.gpus.release(grant);
        }
    }

    /// Everything free, GPUs included.
    fn free(&self) -> ResourceSet {
        let mut free = self.available.clone();
        free.set(names::GPU, self.gpus.free_total());
        free
    }
}

/// A bundle reserved on this node.
struct Bundle {
    /// What it took from the node.
    reservation: Reservation,
    /// What is left of it for tasks and actors in it.
    pool: Pool,
    /// All it holds (to tell "not now" from "never").
    total: ResourceSet,
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
    /// The node's free resources.
    node: Pool,
    /// Placement group bundles reserved here.
    bundles: HashMap<BundleKey, Bundle>,
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
                node: Pool {
                    available,
                    gpus: GpuPool::new(gpu_ids),
                },
                bundles: HashMap::new(),
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
        let mut available = self.lock().node.free();
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
    /// fit), or from `bundle`'s when given, or says what is short
    /// (RESOURCE_EXHAUSTED; NOT_FOUND for a bundle not reserved here;
    /// OUT_OF_RANGE for a request the bundle could never hold).
    pub fn reserve(
        &self,
        request: &ResourceSet,
        bundle: Option<BundleKey>,
    ) -> Result<Reservation, Status> {
        Self::reserve_locked(&mut self.lock(), request, bundle)
    }

    fn reserve_locked(
        ledger: &mut Ledger,
        request: &ResourceSet,
        bundle: Option<BundleKey>,
    ) -> Result<Reservation, Status> {
        let Some(key) = bundle else {
            return ledger.node.reserve(request, "this node");
        };
        let (group, index) = key;
        let Some(reserved) = ledger.bundles.get_mut(&key) else {
            return Err(Status::not_found(format!(
                "placement group {group} has no bundle {index} on this node (it was removed, or placed elsewhere)"
            )));
        };
        if let Some((name, wanted, held)) = reserved.total.shortfall(request) {
            return Err(Status::out_of_range(format!(
                "needs {name} {wanted}, but bundle {index} of placement group {group} holds {held}"
            )));
        }
        let whose = format!("bundle {index} of placement group {group}");
        let mut reservation = reserved.pool.reserve(request, &whose)?;
        reservation.bundle = Some(key);
        Ok(reservation)
    }

    /// Gives a reservation's resources back and wakes whoever waits for them.
    pub fn unreserve(&self, reservation: &Reservation) {
        Self::unreserve_locked(&mut self.lock(), reservation);
        self.freed.notify_waiters();
    }

    fn unreserve_locked(ledger: &mut Ledger, reservation: &Reservation) {
        match reservation.bundle {
            None => ledger.node.unreserve(reservation),
            // A released bundle gave everything back already.
            Some(key) => {
                if let Some(bundle) = ledger.bundles.get_mut(&key) {
                    bundle.pool.unreserve(reservation);
                }
            }
        }
    }

    /// Reserves a placement group bundle from the node's free resources.
    /// Reserving one already held is a no-op (the head retried).
    pub fn reserve_bundle(&self, key: BundleKey, request: &ResourceSet) -> Result<(), Status> {
        let mut ledger = self.lock();
        if ledger.bundles.contains_key(&key) {
            return Ok(());
        }
        let reservation = ledger.node.reserve(request, "this node")?;
        let mut others = reservation.others.clone();
        others.set(names::GPU, Quantity::ZERO);
        let gpus = match &reservation.grant {
            Some(grant) => ledger.node.gpus.sub_pool(grant),
            None => GpuPool::new(Vec::new()),
        };
        ledger.bundles.insert(
            key,
            Bundle {
                reservation,
                pool: Pool {
                    available: others,
                    gpus,
                },
                total: request.clone(),
            },
        );
        info!(group = %key.0, bundle = key.1, resources = %request, "bundle reserved");
        Ok(())
    }

    /// Gives a bundle back to the node; returns the workers of the actors
    /// that ran in it, for the caller to end (their exits are reported as usual).
    pub fn release_bundle(&self, key: BundleKey) -> Vec<WorkerId> {
        let workers = {
            let mut ledger = self.lock();
            let Some(bundle) = ledger.bundles.remove(&key) else {
                return Vec::new();
            };
            ledger.node.unreserve(&bundle.reservation);
            ledger
                .actors
                .values()
                .filter(|running| running.reservation.bundle == Some(key))
                .map(|running| running.worker.id)
                .collect::<Vec<_>>()
        };
        self.freed.notify_waiters();
        info!(group = %key.0, bundle = key.1, actors = workers.len(), "bundle released");
        workers
    }

    /// Whether the bundle is reserved here.
    pub fn has_bundle(&self, key: BundleKey) -> bool {
        self.lock().bundles.contains_key(&key)
    }

    /// The bundles reserved here.
    pub fn bundles(&self) -> Vec<BundleKey> {
        self.lock().bundles.keys().copied().collect()
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
        let pool = match reservation.bundle {
            None => &mut ledger.node,
            Some(key) => match ledger.bundles.get_mut(&key) {
                Some(bundle) => &mut bundle.pool,
                None => return,
            },
        };
        let free = pool.available.get(names::CPU);
        let free = if lend { free + cpus } else { free - cpus };
        pool.available.set(names::CPU, free);
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
        let bundle = spec.placement.as_ref().map(bundle_key).transpose()?;
        let reservation = Self::reserve_locked(&mut ledger, &request, bundle)?;
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
