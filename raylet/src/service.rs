//! The `photon.v1.Raylet` gRPC service: objects (see `transfer`) and actors
//! (see `actors`).

use std::sync::Arc;

use photon_proto::ActorId;
use photon_proto::v1::raylet_server::Raylet;
use photon_proto::v1::{
    ActorSpec, DeleteObjectReply, DeleteObjectRequest, FetchObjectReply, FetchObjectRequest,
    ObjectChunk, PullObjectRequest, PushObjectReply, StartActorReply, StopActorReply,
    StopActorRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::actors::ActorHost;
use crate::transfer::{ChunkStream, TransferService};

/// Everything a raylet serves.
pub struct RayletService {
    /// Object transfer.
    pub transfers: TransferService,
    /// Actors on this node.
    pub actors: Arc<ActorHost>,
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
        self.actors.start(&request.into_inner()).map(Response::new)
    }

    async fn stop_actor(
        &self,
        request: Request<StopActorRequest>,
    ) -> Result<Response<StopActorReply>, Status> {
        let id = ActorId::from_slice(&request.into_inner().actor_id)?;
        self.actors.stop(id)?;
        Ok(Response::new(StopActorReply {}))
    }
}
