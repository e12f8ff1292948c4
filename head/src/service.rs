//! The `photon.v1.Head` gRPC service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use photon_proto::v1::head_server::Head;
use photon_proto::v1::{
    ActorExit, ActorExitReply, ActorRecord, ActorSpec, ActorState, GetActorRequest,
    GetLineageRequest, KillActorRequest, LineageRecord, LineageUpdate, LineageUpdateReply,
    ListActorsReply, ListActorsRequest,
};
use photon_proto::v1::{
    GetClusterStatusRequest, GetClusterStatusResponse, GetObjectLocationsReply,
    GetObjectLocationsRequest, Heartbeat, HeartbeatReply, KvGetRequest, KvGetResponse,
    KvPutRequest, KvPutResponse, ObjectLocation, ObjectLocationUpdate, ObjectLocationUpdateReply,
    RegisterNodeRequest, RegisterNodeResponse,
};
use photon_proto::v1::{
    GetPlacementGroupRequest, ListPlacementGroupsReply, ListPlacementGroupsRequest,
    PlacementGroupRecord, PlacementGroupSpec, PlacementGroupState, RemovePlacementGroupRequest,
};
use photon_proto::{
    ActorId, JobId, NodeId, ObjectId, PROTOCOL_VERSION, ResourceSet, WorkerId,
    check_protocol_version,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::actors::ActorTable;
use crate::nodes::NodeTable;
use crate::objects::ObjectDirectory;
use crate::persist::Persistence;

/// How long a probe of a raylet whose stream broke may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// State shared by the service and the failure detector.
pub struct HeadState {
    pub(crate) nodes: NodeTable,
    pub(crate) objects: ObjectDirectory,
    pub(crate) persistence: Persistence,
    pub(crate) cluster_id: String,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) started: Instant,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    pub(crate) actors: ActorTable,
    pub(crate) placement_groups: crate::placement_groups::PlacementGroupTable,
    pub(crate) lineage: crate::lineage::LineageTable,
    /// One placement pass at a time.
    pub(crate) placement: tokio::sync::Mutex<()>,
    /// Clients of raylets, by address.
    pub(crate) raylets:
        std::sync::Mutex<std::collections::HashMap<String, crate::placement::RayletClientHandle>>,
    /// The cluster token, for calls to raylets.
    pub(crate) token: String,
    /// Actors restored as alive after a head restart, until their node confirms them.
    pub(crate) unconfirmed_actors: std::sync::Mutex<std::collections::HashSet<ActorId>>,
    /// Submitted jobs.
    pub(crate) jobs: crate::jobs::JobTable,
    /// Uploaded programs and working directories.
    pub(crate) packages: crate::packages::Packages,
    /// The session directory: database, packages, jobs' directories.
    pub(crate) data_dir: std::path::PathBuf,
    /// The head's gRPC address as drivers on this node reach it.
    pub(crate) address: String,
    /// Where the status page and metrics are served (empty: nowhere).
    pub(crate) metrics_address: String,
    /// Which finished jobs are kept.
    pub(crate) job_retention: crate::retention::JobRetention,
    /// Drivers' open sessions, by job.
    pub(crate) drivers: crate::drivers::DriverSessions,
    /// The session CA that issues joining nodes' certificates, if any.
    pub(crate) certificate_authority: Option<Arc<crate::CertificateAuthority>>,
    /// Workers that own work of their own.
    pub(crate) owners: crate::owners::Owners,
    /// Objects lent inside values, and who borrowed them.
    pub(crate) borrows: crate::borrows::Borrows,
}

impl HeadState {
    /// Declares a node dead and persists it (off the async runtime).
    pub(crate) async fn mark_dead(&self, id: NodeId, reason: String) {
        if let Some(record) = self.nodes.mark_dead(id, &reason) {
            let dropped = self.objects.drop_node(id);
            debug!(node = %id, dropped, "dropped the dead node's object locations");
            self.persist_node(id, record).await;
            self.groups_lost_with_node(id, &reason).await;
            self.node_lost(id, &reason).await;
            self.owners_lost(id, &reason).await;
        }
    }

    async fn persist_node(&self, id: NodeId, record: photon_proto::v1::NodeRecord) {
        self.persist(format!("node {id}"), move |db| db.save_node(id, &record))
            .await;
    }

    /// Runs one write to the head's store off the async runtime. A failure is
    /// logged; the in-memory table stays authoritative for this run.
    pub(crate) async fn persist(
        &self,
        what: String,
        write: impl FnOnce(&Persistence) -> crate::Result<()> + Send + 'static,
    ) {
        let persistence = self.persistence.clone();
        match tokio::task::spawn_blocking(move || write(&persistence)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(record = %what, %err, "cannot persist record"),
            Err(err) => tracing::error!(record = %what, %err, "persistence task failed"),
        }
    }

    /// A heartbeat stream ended without a drain: probe the raylet at once; if
    /// it does not answer, it is dead now rather than after the timeout.
    async fn probe(&self, id: NodeId) {
        let Some(address) = self.nodes.address(id) else {
            return;
        };
        let outcome =
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&address)).await;
        let failure = match outcome {
            Ok(Ok(_)) => {
                debug!(node = %id, %address, "heartbeat stream broke but the raylet answers");
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
        };
        self.mark_dead(
            id,
            format!("its heartbeat stream broke and a probe of {address} failed: {failure}"),
        )
        .await;
    }
}

/// The gRPC service over [`HeadState`].
#[derive(Clone)]
pub struct HeadService {
    pub(crate) state: Arc<HeadState>,
}

impl HeadService {
    /// Whether a task or actor asking for `request` in `bundle` can ever run
    /// there: the group exists, is not removed, has that bundle, and the
    /// bundle holds the request.
    fn check_bundle_request(
        &self,
        bundle: &photon_proto::v1::BundleRef,
        request: &ResourceSet,
    ) -> Result<(), String> {
        let id = photon_proto::PlacementGroupId::from_slice(&bundle.group_id)
            .map_err(|e| e.to_string())?;
        let record = self
            .state
            .placement_groups
            .get(id)
            .ok_or_else(|| format!("placement group {id} does not exist"))?;
        if record.state == PlacementGroupState::Removed as i32 {
            return Err(format!("placement group {id} was removed"));
        }
        let bundles = record.spec.map(|s| s.bundles).unwrap_or_default();
        let index = bundle.bundle_index as usize;
        let Some(held) = bundles.get(index) else {
            return Err(format!(
                "placement group {id} has {} bundle(s); there is no bundle {index}",
                bundles.len()
            ));
        };
        let held = ResourceSet::from_proto(&held.resources);
        if let Some((name, wanted, has)) = held.shortfall(request) {
            return Err(format!(
                "it needs {name} {wanted}, but bundle {index} of placement group {id} holds {has}"
            ));
        }
        Ok(())
    }
}

/// How long the head tries to dial a newly registered node.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to a node's advertised address once it registers (TLS
/// handshake included): a node advertised at an address others cannot
/// reach (a wildcard, a private interface, a firewall), or with a
/// certificate that does not name it, would join and then fail every
/// transfer and lease, so `photon status` says so.
async fn probe_advertised_address(state: Arc<HeadState>, id: NodeId, address: String) {
    let endpoint = match photon_proto::tls::endpoint(&address) {
        Ok(endpoint) => endpoint.connect_timeout(REACH_TIMEOUT),
        Err(err) => {
            state.nodes.set_unreachable(id, err);
            return;
        }
    };
    let failure = match tokio::time::timeout(REACH_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(_)) => return,
        Ok(Err(err)) => photon_proto::tls::describe(&err),
        Err(_) => format!("no answer within {REACH_TIMEOUT:?}"),
    };
    state.nodes.set_unreachable(
        id,
        format!(
            "the head cannot dial {address} ({failure}): start the raylet with \
             --advertise-address set to an address other nodes reach{}",
            if photon_proto::tls::current().is_some() {
                " and its certificate names"
            } else {
                ""
            }
        ),
    );
}

fn store_status(err: crate::Error) -> Status {
    Status::internal(err.to_string())
}

async fn blocking<T: Send + 'static>(
    body: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(body)
        .await
        .map_err(|e| Status::internal(format!("head store task failed: {e}")))?
        .map_err(store_status)
}

#[tonic::async_trait]
impl Head for HeadService {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let request = request.into_inner();
        let node = request
            .node
            .ok_or_else(|| Status::invalid_argument("register_node needs a node"))?;
        let peer = format!("raylet at {}", node.address);
        check_protocol_version(&peer, request.protocol_version)
            .map_err(|err| Status::failed_precondition(err.to_string()))?;
        let id = NodeId::from_slice(&node.node_id)?;
        let address = node.address.clone();
        let objects = request
            .objects
            .iter()
            .map(|bytes| ObjectId::from_slice(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        // `Aborted` tells a raylet declared dead to rejoin as a new node.
        let record = self
            .state
            .nodes
            .register(id, node)
            .map_err(|err| Status::aborted(err.to_string()))?;
        let persistence = self.state.persistence.clone();
        blocking(move || persistence.save_node(id, &record)).await?;
        info!(node = %id, %address, objects = objects.len(), "node registered");
        self.state.tasks.spawn(probe_advertised_address(
            self.state.clone(),
            id,
            address.clone(),
        ));
        self.state.objects.reset_node(id, objects);
        self.state
            .reconcile_actors(id, &address, request.actors)
            .await;
        self.state
            .reconcile_bundles(id, &address, request.bundles)
            .await;
        Ok(Response::new(RegisterNodeResponse {
            cluster_id: self.state.cluster_id.clone(),
            heartbeat_interval_ms: self.state.heartbeat_interval.as_millis() as u64,
        }))
    }

    type HeartbeatsStream = Pin<Box<dyn Stream<Item = Result<HeartbeatReply, Status>> + Send>>;

    async fn heartbeats(
        &self,
        request: Request<Streaming<Heartbeat>>,
    ) -> Result<Response<Self::HeartbeatsStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, receiver) = mpsc::channel(4);
        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            let mut node = None;
            let mut draining = false;
            loop {
                let message = tokio::select! {
                    () = state.cancel.cancelled() => return,
                    message = inbound.message() => message,
                };
                let Ok(Some(heartbeat)) = message else { break };
                let verdict = NodeId::from_slice(&heartbeat.node_id)
                    .map_err(|err| err.to_string())
                    .and_then(|id| state.nodes.heartbeat(id, &heartbeat).map(|()| id));
                match verdict {
                    Ok(id) => {
                        node = Some(id);
                        draining |= heartbeat.draining;
                    }
                    Err(message) => {
                        let _ = replies
                            .send(Ok(HeartbeatReply {
                                unknown_node: true,
                                message,
                            }))
                            .await;
                        return;
                    }
                }
            }
            if let Some(id) = node {
                if draining {
                    state
                        .mark_dead(id, "stopped: its raylet shut down cleanly".into())
                        .await;
                } else {
                    state.probe(id).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    type AttachDriverStream =
        Pin<Box<dyn Stream<Item = Result<photon_proto::v1::DriverKeepalive, Status>> + Send>>;

    async fn attach_driver(
        &self,
        request: Request<photon_proto::v1::AttachDriverRequest>,
    ) -> Result<Response<Self::AttachDriverStream>, Status> {
        let request = request.into_inner();
        let job = photon_proto::JobId::from_slice(&request.job_id)?;
        let session = crate::drivers::DriverSessions::open(&self.state, job, request.packages);
        let (keepalives, received) = mpsc::channel(1);
        let cancel = self.state.cancel.clone();
        // A keepalive a second, so that a dead connection is noticed; a head
        // shutting down ends the session rather than wait for it.
        self.state.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if keepalives
                    .send(photon_proto::v1::DriverKeepalive {})
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        // The stream owns the session: when the driver's connection goes,
        // the stream is dropped, and the session with it.
        let stream = ReceiverStream::new(received).map(move |keepalive| {
            let _open = &session;
            Ok(keepalive)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<photon_proto::v1::IssueNodeCertificateRequest>,
    ) -> Result<Response<photon_proto::v1::IssueNodeCertificateReply>, Status> {
        let Some(authority) = &self.state.certificate_authority else {
            return Err(Status::failed_precondition(
                "this head has no session CA (it was not started with --tls auto): give the node \
                 --tls-cert and --tls-key signed by the cluster's CA",
            ));
        };
        let hosts = request.into_inner().hosts;
        let issued = authority.issue(&hosts).map_err(Status::invalid_argument)?;
        info!(?hosts, "issued a node certificate");
        Ok(Response::new(photon_proto::v1::IssueNodeCertificateReply {
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
            ca_certificate_pem: authority.certificate_pem().to_string(),
        }))
    }

    async fn new_job_id(
        &self,
        _: Request<photon_proto::v1::NewJobIdRequest>,
    ) -> Result<Response<photon_proto::v1::NewJobIdReply>, Status> {
        Ok(Response::new(photon_proto::v1::NewJobIdReply {
            job_id: self.state.jobs.new_id().to_vec(),
        }))
    }

    async fn register_owner(
        &self,
        request: Request<photon_proto::v1::RegisterOwnerRequest>,
    ) -> Result<Response<photon_proto::v1::RegisterOwnerReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)?;
        let node = NodeId::from_slice(&request.node_id)?;
        let worker = WorkerId::from_slice(&request.worker_id)?;
        let owner_tag = self.state.owners.register(job, node);
        debug!(%job, %node, %worker, owner_tag, "a worker became an owner");
        Ok(Response::new(photon_proto::v1::RegisterOwnerReply {
            owner_tag,
        }))
    }

    async fn owner_died(
        &self,
        request: Request<photon_proto::v1::OwnerDiedRequest>,
    ) -> Result<Response<photon_proto::v1::OwnerDiedReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)?;
        let state = self.state.clone();
        // In the background: ending everything may take a while, and the
        // raylet's report must not wait for it.
        self.state.tasks.spawn(async move {
            state
                .owner_ended(job, request.owner_tag, &request.reason)
                .await;
        });
        Ok(Response::new(photon_proto::v1::OwnerDiedReply {}))
    }

    async fn get_cluster_status(
        &self,
        _: Request<GetClusterStatusRequest>,
    ) -> Result<Response<GetClusterStatusResponse>, Status> {
        Ok(Response::new(GetClusterStatusResponse {
            cluster_id: self.state.cluster_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            nodes: self.state.nodes.snapshot(),
            head_uptime_ms: self.state.started.elapsed().as_millis() as u64,
            metrics_address: self.state.metrics_address.clone(),
            lineage_records: self.state.lineage.len() as u64,
        }))
    }

    async fn kv_put(
        &self,
        request: Request<KvPutRequest>,
    ) -> Result<Response<KvPutResponse>, Status> {
        let request = request.into_inner();
        if request.namespace.contains('\0') {
            return Err(Status::invalid_argument(
                "kv namespace must not contain NUL",
            ));
        }
        let persistence = self.state.persistence.clone();
        let written = blocking(move || {
            persistence.kv_put(
                &request.namespace,
                &request.key,
                &request.value,
                request.overwrite,
            )
        })
        .await?;
        Ok(Response::new(KvPutResponse { written }))
    }

    async fn kv_get(
        &self,
        request: Request<KvGetRequest>,
    ) -> Result<Response<KvGetResponse>, Status> {
        let request = request.into_inner();
        let persistence = self.state.persistence.clone();
        let value = blocking(move || persistence.kv_get(&request.namespace, &request.key)).await?;
        Ok(Response::new(KvGetResponse { value }))
    }

    async fn update_object_location(
        &self,
        request: Request<ObjectLocationUpdate>,
    ) -> Result<Response<ObjectLocationUpdateReply>, Status> {
        let update = request.into_inner();
        let object = ObjectId::from_slice(&update.object_id)?;
        let node = NodeId::from_slice(&update.node_id)?;
        if update.added {
            self.state.objects.add(object, node);
        } else {
            self.state.objects.remove(object, node);
        }
        Ok(Response::new(ObjectLocationUpdateReply {}))
    }

    async fn get_object_locations(
        &self,
        request: Request<GetObjectLocationsRequest>,
    ) -> Result<Response<GetObjectLocationsReply>, Status> {
        let object = ObjectId::from_slice(&request.into_inner().object_id)?;
        let alive = self.state.nodes.alive_addresses();
        let locations = self
            .state
            .objects
            .holders(object)
            .into_iter()
            .filter_map(|node| {
                alive.get(&node).map(|address| ObjectLocation {
                    node_id: node.to_vec(),
                    address: address.clone(),
                })
            })
            .collect();
        let sharing = self.state.borrows.sharing(object);
        Ok(Response::new(GetObjectLocationsReply {
            locations,
            borrowers: sharing.borrowers,
            owner_released: sharing.owner_released,
            owner_ended: sharing.owner_ended.unwrap_or_default(),
            holding_objects: sharing
                .holding_objects
                .iter()
                .map(ObjectId::to_vec)
                .collect(),
        }))
    }

    async fn update_borrows(
        &self,
        request: Request<photon_proto::v1::UpdateBorrowsRequest>,
    ) -> Result<Response<photon_proto::v1::UpdateBorrowsReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)?;
        let free = self
            .state
            .borrows
            .apply(job, request.owner_tag, &request.updates)?;
        if !free.is_empty() {
            let state = self.state.clone();
            self.state
                .tasks
                .spawn(async move { state.free_everywhere(&free).await });
        }
        Ok(Response::new(photon_proto::v1::UpdateBorrowsReply {}))
    }

    async fn create_actor(
        &self,
        request: Request<ActorSpec>,
    ) -> Result<Response<ActorRecord>, Status> {
        let spec = request.into_inner();
        let id = ActorId::from_slice(&spec.actor_id)?;
        if spec.program.is_empty() {
            return Err(Status::invalid_argument(format!(
                "actor {id} has no program to run"
            )));
        }
        if spec.detached && spec.name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "detached actor {id} has no name: it outlives its job, and only its name finds it again"
            )));
        }
        let request = ResourceSet::from_proto(&spec.resources);
        if let Some((name, amount)) = request.iter().find(|(_, q)| q.units() < 0) {
            return Err(Status::invalid_argument(format!(
                "actor {id} requests a negative amount {amount} of {name}"
            )));
        }
        let gpus = request.get(photon_proto::names::GPU);
        if gpus > photon_proto::Quantity::whole(1) && !gpus.is_whole() {
            return Err(Status::invalid_argument(format!(
                "actor {id} requests {gpus} GPUs: requests above 1 GPU must be whole numbers"
            )));
        }
        if let Some(bundle) = &spec.placement {
            self.check_bundle_request(bundle, &request)
                .map_err(|e| Status::invalid_argument(format!("actor {id}: {e}")))?;
        }
        if !spec.name.is_empty()
            && let Some(existing) = self.state.actors.find_by_name(&spec.name)
            && existing.state != ActorState::Dead as i32
        {
            return Err(Status::already_exists(format!(
                "an actor named {:?} already exists (state {:?}); pick another name or look it up",
                spec.name,
                ActorState::try_from(existing.state).unwrap_or(ActorState::Unspecified)
            )));
        }
        let record = ActorRecord {
            spec: Some(spec),
            state: ActorState::Pending as i32,
            reason: "waiting for placement".into(),
            ..Default::default()
        };
        if !self.state.actors.insert(id, record.clone()) {
            return Err(Status::already_exists(format!("actor {id} already exists")));
        }
        self.state.save_actor(id, record).await;
        self.state.place_waiting().await;
        Ok(Response::new(
            self.state.actors.get(id).expect("just inserted"),
        ))
    }

    async fn kill_actor(
        &self,
        request: Request<KillActorRequest>,
    ) -> Result<Response<ActorRecord>, Status> {
        let id = ActorId::from_slice(&request.into_inner().actor_id)?;
        self.state
            .end_actor(id, "killed by request")
            .await
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("actor {id} is not known to the head")))
    }

    async fn list_actors(
        &self,
        _: Request<ListActorsRequest>,
    ) -> Result<Response<ListActorsReply>, Status> {
        let mut actors = self.state.actors.all();
        actors.sort_by(|a, b| {
            let name =
                |r: &ActorRecord| r.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            name(a).cmp(&name(b))
        });
        Ok(Response::new(ListActorsReply { actors }))
    }

    async fn report_actor_exit(
        &self,
        request: Request<ActorExit>,
    ) -> Result<Response<ActorExitReply>, Status> {
        let exit = request.into_inner();
        let id = ActorId::from_slice(&exit.actor_id)?;
        let placed_worker = {
            // A worker that dies at once can be reported while the placement
            // pass that started it still waits for `StartActor`'s reply: wait
            // for the pass to record the worker, or the report would be
            // dropped and the actor stay ALIVE with no worker.
            let _pass = self.state.placement.lock().await;
            self.state.actors.get(id).is_some_and(|r| {
                r.state == ActorState::Alive as i32 && r.worker_id == exit.worker_id
            })
        };
        // Only the worker the head placed counts: a late report of an older
        // incarnation, or of a killed actor, changes nothing.
        if placed_worker {
            self.state.actor_lost(id, &exit.reason).await;
            self.state.place_waiting().await;
        }
        Ok(Response::new(ActorExitReply {}))
    }

    async fn get_actor(
        &self,
        request: Request<GetActorRequest>,
    ) -> Result<Response<ActorRecord>, Status> {
        let request = request.into_inner();
        let record = if request.actor_id.is_empty() {
            let record = self
                .state
                .actors
                .find_by_name(&request.name)
                .ok_or_else(|| {
                    Status::not_found(format!("no actor is named {:?}", request.name))
                })?;
            // A name finds a live actor; a dead one's name is free again.
            if record.state == ActorState::Dead as i32 {
                return Err(Status::not_found(format!(
                    "the actor named {:?} is dead ({}); create it again to use the name",
                    request.name, record.reason
                )));
            }
            record
        } else {
            let id = ActorId::from_slice(&request.actor_id)?;
            self.state
                .actors
                .get(id)
                .ok_or_else(|| Status::not_found(format!("actor {id} is not known to the head")))?
        };
        Ok(Response::new(record))
    }

    async fn update_lineage(
        &self,
        request: Request<LineageUpdate>,
    ) -> Result<Response<LineageUpdateReply>, Status> {
        let update = request.into_inner();
        let remove = update
            .remove
            .iter()
            .map(|id| ObjectId::from_slice(id))
            .collect::<Result<Vec<_>, _>>()?;
        for record in &update.add {
            ObjectId::from_slice(&record.object_id)?;
        }
        let records = self.state.lineage.update(&update.add, &remove);
        let persistence = self.state.persistence.clone();
        blocking(move || persistence.update_lineage(&update.add, &remove)).await?;
        Ok(Response::new(LineageUpdateReply {
            records: records as u64,
        }))
    }

    async fn create_placement_group(
        &self,
        request: Request<PlacementGroupSpec>,
    ) -> Result<Response<PlacementGroupRecord>, Status> {
        let spec = request.into_inner();
        let id = crate::placement_groups::validate(&spec).map_err(Status::invalid_argument)?;
        let record = PlacementGroupRecord {
            state: PlacementGroupState::Pending as i32,
            reason: "waiting for placement".into(),
            bundle_nodes: vec![Vec::new(); spec.bundles.len()],
            bundle_addresses: vec![String::new(); spec.bundles.len()],
            spec: Some(spec),
        };
        if !self.state.placement_groups.insert(id, record.clone()) {
            return Err(Status::already_exists(format!(
                "placement group {id} already exists"
            )));
        }
        self.state.save_group(id, record).await;
        self.state.place_waiting().await;
        Ok(Response::new(
            self.state.placement_groups.get(id).expect("just inserted"),
        ))
    }

    async fn get_placement_group(
        &self,
        request: Request<GetPlacementGroupRequest>,
    ) -> Result<Response<PlacementGroupRecord>, Status> {
        let id = photon_proto::PlacementGroupId::from_slice(&request.into_inner().group_id)?;
        self.state
            .placement_groups
            .get(id)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("placement group {id} is not known to the head"))
            })
    }

    async fn remove_placement_group(
        &self,
        request: Request<RemovePlacementGroupRequest>,
    ) -> Result<Response<PlacementGroupRecord>, Status> {
        let id = photon_proto::PlacementGroupId::from_slice(&request.into_inner().group_id)?;
        let removed = self
            .state
            .remove_group(id, "removed by request")
            .await
            .ok_or_else(|| {
                Status::not_found(format!("placement group {id} is not known to the head"))
            })?;
        // Its resources are free again: waiting groups and actors may fit now.
        self.state.place_waiting().await;
        Ok(Response::new(removed))
    }

    async fn list_placement_groups(
        &self,
        _: Request<ListPlacementGroupsRequest>,
    ) -> Result<Response<ListPlacementGroupsReply>, Status> {
        Ok(Response::new(ListPlacementGroupsReply {
            groups: self.state.placement_groups.all(),
        }))
    }

    async fn get_lineage(
        &self,
        request: Request<GetLineageRequest>,
    ) -> Result<Response<LineageRecord>, Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        self.state
            .lineage
            .get(id)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the head has no lineage for object {id}: it was made by put, or freed"
                ))
            })
    }
}
