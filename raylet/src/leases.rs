//! Task leases: a driver asks for a worker with some resources, the raylet
//! holds those resources and hands out a worker process (prestarted and
//! reused per program), and the driver pushes tasks straight to the worker
//! until it returns the lease. When the node is busy the request waits here,
//! unless the head's cluster view shows another node with room now: then it
//! is spilled back there (Ray's "spillback"). A request no live node could
//! ever fit is refused with the reason, so the caller can say `Unschedulable`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use photon_proto::v1::{NodeState, WorkerLeaseReply, WorkerLeaseRequest};
use photon_proto::{JobId, NodeId, ResourceSet, WorkerId};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tracing::{debug, warn};

use crate::actors::{ActorHost, BundleKey, Reservation, bundle_key};
use crate::head_link::HeadLink;
use crate::worker_directory::WorkerDirectory;
use crate::worker_pool::{Worker, WorkerPool, WorkerSpec};

/// How often a waiting request looks for another node with room.
const SPILLBACK_CHECK: Duration = Duration::from_millis(250);

struct Lease {
    worker: Worker,
    reservation: Reservation,
    /// Its worker waits on objects: its CPUs are lent back to the node.
    blocked: bool,
    /// Who asked: the job (as its workers' environment names it) and the
    /// owner's tag (0: the driver).
    owner: (Option<String>, u32),
}

/// The node's task leases.
pub struct LeaseManager {
    node_id: NodeId,
    host: Arc<ActorHost>,
    pool: Arc<WorkerPool>,
    directory: Arc<WorkerDirectory>,
    head: Arc<HeadLink>,
    leases: Mutex<HashMap<WorkerId, Lease>>,
    /// Leases granted since start (for metrics).
    granted: std::sync::atomic::AtomicU64,
}

/// A lease being granted. Dropped before the grant (the request was
/// cancelled, or failed) it gives the resources back and returns the worker
/// to the pool, so neither leaks.
struct PendingLease<'a> {
    host: &'a ActorHost,
    pool: &'a WorkerPool,
    reservation: Option<Reservation>,
    worker: Option<Worker>,
}

impl Drop for PendingLease<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.host.unreserve(&reservation);
        }
        if let Some(worker) = self.worker.take() {
            self.pool.release(&worker);
        }
    }
}

impl LeaseManager {
    /// Leases on this node; resources of leased workers that die come back.
    pub fn start(
        node_id: NodeId,
        host: Arc<ActorHost>,
        pool: Arc<WorkerPool>,
        directory: Arc<WorkerDirectory>,
        head: Arc<HeadLink>,
    ) -> Arc<Self> {
        let manager = Arc::new(Self {
            node_id,
            host,
            pool,
            directory,
            head,
            leases: Mutex::default(),
            granted: Default::default(),
        });
        let mut exits = manager.pool.subscribe();
        let weak = Arc::downgrade(&manager);
        tokio::spawn(async move {
            loop {
                let exit = match exits.recv().await {
                    Ok(exit) => exit,
                    Err(RecvError::Lagged(missed)) => {
                        warn!(missed, "lease manager missed worker exits");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(manager) = weak.upgrade() else {
                    return;
                };
                let lease = manager.lock().remove(&exit.worker_id);
                if let Some(lease) = lease {
                    debug!(worker = %exit.worker_id, reason = %exit.reason, "leased worker ended");
                    manager.give_back(&lease);
                }
            }
        });
        manager
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases granted since start.
    pub fn granted_total(&self) -> u64 {
        self.granted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Workers leased out now.
    pub fn leased(&self) -> usize {
        self.lock().len()
    }

    /// `RequestWorkerLease`: grant here, spill back, or refuse as infeasible.
    pub async fn request(&self, request: WorkerLeaseRequest) -> Result<WorkerLeaseReply, Status> {
        let resources = ResourceSet::from_proto(&request.resources);
        debug!(?resources, program = %request.program, "lease requested");
        // A task in a placement group runs in its bundle here, or nowhere.
        let bundle = request.placement.as_ref().map(bundle_key).transpose()?;
        if bundle.is_none() && !self.host.total().contains(&resources) {
            return self.elsewhere(&resources, request.no_spillback).await;
        }
        let mut pending = PendingLease {
            host: &self.host,
            pool: &self.pool,
            reservation: None,
            worker: None,
        };
        let mut last_spill_check = Instant::now();
        let mut waiting = None;
        while pending.reservation.is_none() {
            // Register interest before trying, so a release in between is not missed.
            let freed = self.host.freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.host.reserve(&resources, bundle) {
                Ok(reservation) => pending.reservation = Some(reservation),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::OutOfRange
                    ) =>
                {
                    return Ok(WorkerLeaseReply {
                        infeasible: status.message().to_string(),
                        ..Default::default()
                    });
                }
                Err(_) => {
                    if waiting.is_none() && bundle.is_none() {
                        waiting = Some(self.host.demand().wait(&resources));
                        self.prestart_for(&request, &resources);
                    }
                    if !request.no_spillback
                        && bundle.is_none()
                        && last_spill_check.elapsed() >= SPILLBACK_CHECK
                    {
                        last_spill_check = Instant::now();
                        if let Some(address) = self.node_with_room(&resources).await {
                            return Ok(WorkerLeaseReply {
                                spillback_address: address,
                                ..Default::default()
                            });
                        }
                    }
                    let _ = tokio::time::timeout(SPILLBACK_CHECK, freed).await;
                }
            }
        }
        drop(waiting);
        let reservation = pending.reservation.as_ref().expect("reserved above");
        let spec = worker_spec(&request, &reservation.devices);
        let worker = pending.worker.insert(
            self.pool
                .lease(&spec)
                .map_err(|err| Status::failed_precondition(err.to_string()))?,
        );
        let (worker_id, pid) = (worker.id, worker.pid);
        debug!(worker = %worker_id, pid, "lease reserved; waiting for its worker to register");
        let address = match self.directory.wait_registered(worker_id).await {
            Ok(address) => address,
            Err(status) => {
                pending.worker = None;
                self.pool.kill(worker_id);
                return Err(status);
            }
        };
        let reply = WorkerLeaseReply {
            worker_id: worker_id.to_vec(),
            worker_address: address,
            node_id: self.node_id.to_vec(),
            pid,
            ..Default::default()
        };
        // A bundle released while the worker started: no grant (checked
        // under the lease lock, which the release's kill also takes).
        let mut leases = self.lock();
        if let Some((group, index)) = bundle
            && !self.host.has_bundle((group, index))
        {
            drop(leases);
            pending.worker = None;
            self.pool.kill(worker_id);
            return Ok(WorkerLeaseReply {
                infeasible: format!(
                    "placement group {group} has no bundle {index} on this node any more (it was removed)"
                ),
                ..Default::default()
            });
        }
        let reservation = pending.reservation.take().expect("reserved above");
        let worker = pending.worker.take().expect("leased above");
        self.granted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(worker = %worker_id, pid, "lease granted");
        leases.insert(
            worker_id,
            Lease {
                worker,
                reservation,
                blocked: false,
                owner: (
                    request.env.get(crate::worker_logs::JOB_ID_ENV).cloned(),
                    request.owner_tag,
                ),
            },
        );
        Ok(reply)
    }

    /// A request that waits for resources gets a worker started for it
    /// meanwhile (one idle per program at most), so the grant does not also
    /// wait for a process to start. Only for requests without GPUs: which
    /// devices a GPU request gets, and so its environment, is known at grant.
    fn prestart_for(&self, request: &WorkerLeaseRequest, resources: &ResourceSet) {
        if resources.get(photon_proto::names::GPU) > photon_proto::Quantity::ZERO {
            return;
        }
        let spec = worker_spec(request, "");
        if self.pool.idle_count(&spec) == 0
            && let Err(err) = self.pool.prestart(&spec, 1)
        {
            debug!(error = %err, "cannot prestart a worker for a waiting lease");
        }
    }

    /// `ReturnWorkerLease`: the worker goes back to the pool (or is stopped)
    /// and its resources come back.
    pub fn release(&self, worker: WorkerId, kill: bool) {
        let Some(lease) = self.lock().remove(&worker) else {
            return; // already returned, or it died
        };
        if kill {
            self.pool.kill(worker);
        } else {
            self.pool.release(&lease.worker);
        }
        self.give_back(&lease);
    }

    /// Kills the workers leased to the owner `owner_tag` of `job` (it
    /// ended: nobody will read their results); their leases end as the
    /// pool reports their exits. Returns how many.
    pub fn kill_owned_by(&self, job: JobId, owner_tag: u32) -> u32 {
        let job = Some(job.to_string());
        let workers: Vec<WorkerId> = self
            .lock()
            .iter()
            .filter(|(_, lease)| lease.owner == (job.clone(), owner_tag))
            .map(|(worker, _)| *worker)
            .collect();
        for worker in &workers {
            self.pool.kill(*worker);
        }
        workers.len() as u32
    }

    /// Kills the workers leased from a bundle being released; their leases
    /// end as the pool reports their exits. Returns how many.
    pub fn kill_in_bundle(&self, key: BundleKey) -> u32 {
        let workers: Vec<WorkerId> = self
            .lock()
            .iter()
            .filter(|(_, lease)| lease.reservation.bundle == Some(key))
            .map(|(worker, _)| *worker)
            .collect();
        for worker in &workers {
            self.pool.kill(*worker);
        }
        workers.len() as u32
    }

    /// An ended lease's resources come back (less CPUs it had lent).
    fn give_back(&self, lease: &Lease) {
        if lease.blocked {
            self.host.reclaim_cpus(&lease.reservation);
        }
        self.host.unreserve(&lease.reservation);
    }

    /// `WorkerBlocked`: a leased worker waiting on objects lends its CPUs to
    /// the node, and takes them back when it resumes. Unknown workers (an
    /// actor's, a returned lease's) are ignored.
    pub fn set_blocked(&self, worker: WorkerId, blocked: bool) {
        let mut leases = self.lock();
        let Some(lease) = leases.get_mut(&worker) else {
            return;
        };
        if lease.blocked == blocked {
            return;
        }
        lease.blocked = blocked;
        debug!(%worker, blocked, "leased worker blocked state changed");
        if blocked {
            self.host.lend_cpus(&lease.reservation);
        } else {
            self.host.reclaim_cpus(&lease.reservation);
        }
    }

    /// A request this node can never fit: spill it to a node that can, or
    /// say why none can.
    async fn elsewhere(
        &self,
        resources: &ResourceSet,
        no_spillback: bool,
    ) -> Result<WorkerLeaseReply, Status> {
        let nodes = self.head.nodes().await?;
        let fits: Vec<_> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive as i32)
            .filter_map(|n| n.info.as_ref())
            .filter(|info| ResourceSet::from_proto(&info.total).contains(resources))
            .collect();
        if no_spillback || fits.is_empty() {
            let total = self.host.total();
            let (name, wanted, have) = total
                .shortfall(resources)
                .unwrap_or_else(|| (String::new(), Default::default(), Default::default()));
            return Ok(WorkerLeaseReply {
                infeasible: format!(
                    "no live node has {name} {wanted} in total (this node has {have}; {} live nodes checked)",
                    nodes
                        .iter()
                        .filter(|n| n.state == NodeState::Alive as i32)
                        .count()
                ),
                ..Default::default()
            });
        }
        let address = self
            .node_with_room(resources)
            .await
            .unwrap_or_else(|| fits[0].address.clone());
        Ok(WorkerLeaseReply {
            spillback_address: address,
            ..Default::default()
        })
    }

    /// Another live node whose latest heartbeat shows room for `resources`,
    /// chosen by the policy the head places actors with (best fit for GPUs;
    /// otherwise pack until half used, then spread).
    async fn node_with_room(&self, resources: &ResourceSet) -> Option<String> {
        let nodes = match self.head.nodes().await {
            Ok(nodes) => nodes,
            Err(status) => {
                debug!(error = status.message(), "no cluster view for spillback");
                return None;
            }
        };
        let others: Vec<_> = nodes
            .into_iter()
            .filter(|n| {
                n.info
                    .as_ref()
                    .is_some_and(|info| info.node_id != self.node_id.to_vec())
            })
            .collect();
        let chosen = photon_proto::placement::choose_node(resources, &others).ok()?;
        chosen.info.as_ref().map(|info| info.address.clone())
    }
}

/// The worker a lease runs: the request's program and environment, with the
/// granted GPU instances (none is an empty list, so a task without GPUs sees
/// none rather than every GPU of the node).
fn worker_spec(request: &WorkerLeaseRequest, devices: &str) -> WorkerSpec {
    let mut env: std::collections::BTreeMap<String, String> =
        request.env.clone().into_iter().collect();
    env.insert("CUDA_VISIBLE_DEVICES".into(), devices.to_string());
    WorkerSpec {
        program: PathBuf::from(&request.program),
        args: request.args.clone(),
        env,
    }
}
