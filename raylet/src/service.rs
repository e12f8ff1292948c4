//! The `photon.v1.Raylet` gRPC service: objects (see `transfer` and
//! `local_objects`), actors (see `actors`), task leases (see `leases`) and
//! worker registration (see `worker_directory`).

use std::sync::Arc;

use photon_proto::v1::raylet_server::Raylet;
use photon_proto::v1::{
    ActorReadyReply, ActorReadyRequest, ActorSpec, ConnectActorReply, ConnectActorRequest,
    CreateObjectRequest, DeleteObjectReply, DeleteObjectRequest, FetchObjectReply,
    FetchObjectRequest, FreeJobObjectsReply, FreeJobObjectsRequest, GetObjectRequest,
    JobMemoryReply, JobMemoryRequest, KillJobWorkersReply, KillJobWorkersRequest, ObjectChunk,
    ObjectDescriptor, ProcessMemory, PullObjectRequest, PushObjectReply, RegisterWorkerReply,
    RegisterWorkerRequest, ReleaseBundleReply, ReleaseBundleRequest, ReleaseObjectReply,
    ReleaseObjectRequest, ReserveBundleReply, ReserveBundleRequest, ReturnWorkerLeaseReply,
    ReturnWorkerLeaseRequest, SealObjectReply, SealObjectRequest, StartActorReply, StopActorReply,
    StopActorRequest, WatchOwnerReply, WatchOwnerRequest, WorkerBlockedReply, WorkerBlockedRequest,
    WorkerExitReply, WorkerExitRequest, WorkerLeaseReply, WorkerLeaseRequest,
};
use photon_proto::{ActorId, JobId, NodeId, ObjectId, WorkerId};
use tonic::{Request, Response, Status, Streaming};

use crate::actors::ActorHost;
use crate::leases::LeaseManager;
use crate::transfer::{ChunkStream, TransferService};
use crate::worker_directory::WorkerDirectory;
use crate::worker_pool::{ExitReason, WorkerPool};

/// Everything a raylet serves.
pub struct RayletService {
    /// Object transfer.
    pub transfers: TransferService,
    /// Actors on this node.
    pub actors: Arc<ActorHost>,
    /// Task leases.
    pub leases: Arc<LeaseManager>,
    /// Worker registrations.
    pub workers: Arc<WorkerDirectory>,
    /// The worker processes.
    pub pool: Arc<WorkerPool>,
    /// Job binaries fetched from the head.
    pub packages: Arc<crate::packages::PackageCache>,
    /// What job workers print, on its way to the head.
    pub forwarder: Arc<crate::worker_logs::LogForwarder>,
    /// This node.
    pub node_id: NodeId,
    /// Workers here that own work of their own.
    pub owners: Arc<crate::owners::Owners>,
}

#[tonic::async_trait]
impl Raylet for RayletService {
    async fn push_object(
        &self,
        request: Request<Streaming<ObjectChunk>>,
    ) -> Result<Response<PushObjectReply>, Status> {
        self.transfers.push_object(request).await
    }

    type PullObjectStream = ChunkStream;

    async fn pull_object(
        &self,
        request: Request<PullObjectRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.transfers.pull_object(request).await
    }

    async fn fetch_object(
        &self,
        request: Request<FetchObjectRequest>,
    ) -> Result<Response<FetchObjectReply>, Status> {
        self.transfers.fetch_object(request).await
    }

    async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectReply>, Status> {
        self.transfers.delete_object(request).await
    }

    async fn start_actor(
        &self,
        request: Request<ActorSpec>,
    ) -> Result<Response<StartActorReply>, Status> {
        let mut spec = request.into_inner();
        self.packages
            .prepare(&mut spec.program, &mut spec.env)
            .await?;
        self.actors.start(&spec).map(Response::new)
    }

    async fn stop_actor(
        &self,
        request: Request<StopActorRequest>,
    ) -> Result<Response<StopActorReply>, Status> {
        let id = ActorId::from_slice(&request.into_inner().actor_id)?;
        self.actors.stop(id)?;
        Ok(Response::new(StopActorReply {}))
    }

    async fn kill_job_workers(
        &self,
        request: Request<KillJobWorkersRequest>,
    ) -> Result<Response<KillJobWorkersReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)?;
        let killed = match request.owner_tag {
            0 => self.forwarder.end_job(&job.to_string()).await,
            owner_tag => self.leases.kill_owned_by(job, owner_tag),
        };
        Ok(Response::new(KillJobWorkersReply { killed }))
    }

    async fn reserve_bundle(
        &self,
        request: Request<ReserveBundleRequest>,
    ) -> Result<Response<ReserveBundleReply>, Status> {
        let request = request.into_inner();
        let bundle = request
            .bundle
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("ReserveBundle names no bundle"))?;
        let key = crate::actors::bundle_key(bundle)?;
        let resources = photon_proto::ResourceSet::from_proto(&request.resources);
        self.actors.reserve_bundle(key, &resources)?;
        Ok(Response::new(ReserveBundleReply {}))
    }

    async fn release_bundle(
        &self,
        request: Request<ReleaseBundleRequest>,
    ) -> Result<Response<ReleaseBundleReply>, Status> {
        let request = request.into_inner();
        let bundle = request
            .bundle
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("ReleaseBundle names no bundle"))?;
        let key = crate::actors::bundle_key(bundle)?;
        let actors = self.actors.release_bundle(key);
        for worker in &actors {
            self.pool.kill(*worker);
        }
        let leased = self.leases.kill_in_bundle(key);
        Ok(Response::new(ReleaseBundleReply {
            workers_ended: actors.len() as u32 + leased,
        }))
    }

    async fn watch_owner(
        &self,
        request: Request<WatchOwnerRequest>,
    ) -> Result<Response<WatchOwnerReply>, Status> {
        let request = request.into_inner();
        let worker = WorkerId::from_slice(&request.worker_id)?;
        let job = JobId::from_slice(&request.job_id)?;
        self.owners.watch(worker, job, request.owner_tag);
        Ok(Response::new(WatchOwnerReply {}))
    }

    async fn free_job_objects(
        &self,
        request: Request<FreeJobObjectsRequest>,
    ) -> Result<Response<FreeJobObjectsReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)?;
        let keep = request
            .keep
            .iter()
            .map(|id| ObjectId::from_slice(id))
            .collect::<Result<std::collections::HashSet<_>, _>>()?;
        let (objects, bytes) = self
            .transfers
            .free_owned_objects(job, request.owner_tag, keep)
            .await?;
        Ok(Response::new(FreeJobObjectsReply { objects, bytes }))
    }

    async fn job_memory(
        &self,
        request: Request<JobMemoryRequest>,
    ) -> Result<Response<JobMemoryReply>, Status> {
        let job = JobId::from_slice(&request.into_inner().job_id)?;
        let memory_of = |pid: u32| ProcessMemory {
            pid,
            resident_bytes: crate::procfs::resident_bytes(pid).unwrap_or(0),
        };
        let workers = self
            .pool
            .job_workers(&job.to_string(), |_| false)
            .iter()
            .map(|worker| memory_of(worker.pid))
            .collect();
        Ok(Response::new(JobMemoryReply {
            raylet: Some(memory_of(std::process::id())),
            workers,
        }))
    }

    async fn request_worker_lease(
        &self,
        request: Request<WorkerLeaseRequest>,
    ) -> Result<Response<WorkerLeaseReply>, Status> {
        let mut request = request.into_inner();
        self.packages
            .prepare(&mut request.program, &mut request.env)
            .await?;
        self.leases.request(request).await.map(Response::new)
    }

    async fn return_worker_lease(
        &self,
        request: Request<ReturnWorkerLeaseRequest>,
    ) -> Result<Response<ReturnWorkerLeaseReply>, Status> {
        let request = request.into_inner();
        let worker = WorkerId::from_slice(&request.worker_id)?;
        self.leases.release(worker, request.kill);
        Ok(Response::new(ReturnWorkerLeaseReply {}))
    }

    async fn worker_blocked(
        &self,
        request: Request<WorkerBlockedRequest>,
    ) -> Result<Response<WorkerBlockedReply>, Status> {
        let request = request.into_inner();
        let worker = WorkerId::from_slice(&request.worker_id)?;
        self.leases.set_blocked(worker, request.blocked);
        Ok(Response::new(WorkerBlockedReply {}))
    }

    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let request = request.into_inner();
        let worker = WorkerId::from_slice(&request.worker_id)?;
        self.workers.register(worker, request.address);
        Ok(Response::new(RegisterWorkerReply {
            node_id: self.node_id.to_vec(),
            actor: self.actors.actor_of_worker(worker),
        }))
    }

    async fn actor_ready(
        &self,
        request: Request<ActorReadyRequest>,
    ) -> Result<Response<ActorReadyReply>, Status> {
        let request = request.into_inner();
        let actor = ActorId::from_slice(&request.actor_id)?;
        let worker = WorkerId::from_slice(&request.worker_id)?;
        if !request.error.is_empty() {
            self.actors.constructor_failed(worker, &request.error);
        }
        self.workers.actor_constructed(actor, worker, request.error);
        Ok(Response::new(ActorReadyReply {}))
    }

    async fn connect_actor(
        &self,
        request: Request<ConnectActorRequest>,
    ) -> Result<Response<ConnectActorReply>, Status> {
        let actor = ActorId::from_slice(&request.into_inner().actor_id)?;
        let worker = self.actors.worker_of_actor(actor).ok_or_else(|| {
            Status::not_found(format!(
                "actor {actor} does not run on node {} (it ended or moved; ask the head)",
                self.node_id
            ))
        })?;
        let address = self.workers.wait_constructed(actor, worker).await?;
        Ok(Response::new(ConnectActorReply {
            worker_address: address,
            worker_id: worker.to_vec(),
        }))
    }

    async fn worker_exit(
        &self,
        request: Request<WorkerExitRequest>,
    ) -> Result<Response<WorkerExitReply>, Status> {
        let worker = WorkerId::from_slice(&request.into_inner().worker_id)?;
        let reply = match self.pool.exit_reason(worker) {
            Some(reason) => WorkerExitReply {
                exited: true,
                killed_for_memory: matches!(reason, ExitReason::KilledForMemory { .. }),
                reason: reason.to_string(),
            },
            None => WorkerExitReply::default(),
        };
        Ok(Response::new(reply))
    }

    async fn create_object(
        &self,
        request: Request<CreateObjectRequest>,
    ) -> Result<Response<ObjectDescriptor>, Status> {
        self.transfers
            .create_object(request)
            .await
            .map(Response::new)
    }

    async fn seal_object(
        &self,
        request: Request<SealObjectRequest>,
    ) -> Result<Response<SealObjectReply>, Status> {
        self.transfers.seal_object(request).await?;
        Ok(Response::new(SealObjectReply {}))
    }

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<ObjectDescriptor>, Status> {
        self.transfers.get_object(request).await.map(Response::new)
    }

    async fn release_object(
        &self,
        request: Request<ReleaseObjectRequest>,
    ) -> Result<Response<ReleaseObjectReply>, Status> {
        self.transfers.release_object(request)?;
        Ok(Response::new(ReleaseObjectReply {}))
    }
}
