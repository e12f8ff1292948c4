//! The raylet's link to the head: register, heartbeat over one stream, and
//! re-register by itself when the head restarts.

use std::time::Duration;

use photon_object_store::ObjectStore;
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::jobs_client::JobsClient;
use photon_proto::v1::{
    ActorExit, GetClusterStatusRequest, GetObjectLocationsRequest, Heartbeat, NodeInfo, NodeRecord,
    ObjectLocationUpdate, ObjectStoreUsage, OwnerDiedRequest, RegisterNodeRequest, WorkerLogLines,
};
use photon_proto::{NodeId, ObjectId, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::actors::ActorHost;
use crate::error::{Error, Result};

type Client = HeadClient<InterceptedService<Channel, AttachToken>>;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a clean shutdown waits for the head to take note of it.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// A lazily connected client of the head.
pub struct HeadLink {
    client: Client,
    jobs: JobsClient<InterceptedService<Channel, AttachToken>>,
    address: String,
}

impl HeadLink {
    /// A client for the head at `address` (host:port) using `token`.
    pub fn new(address: &str, token: &str) -> Result<Self> {
        let endpoint = photon_proto::tls::endpoint(address)
            .map_err(|err| Error::Config(format!("head {err}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let attach = AttachToken::new(token).map_err(Error::Config)?;
        let channel = endpoint.connect_lazy();
        Ok(Self {
            client: HeadClient::with_interceptor(channel.clone(), attach.clone()),
            jobs: JobsClient::with_interceptor(channel, attach),
            address: address.to_string(),
        })
    }

    /// Registers `node`, retrying while the head is unreachable: for at most
    /// `deadline` if given, else until `stop`. Refusals (version, token, dead
    /// node) are returned at once. Returns the heartbeat interval.
    async fn register(
        &self,
        node: &NodeInfo,
        store: &ObjectStore,
        actors: &ActorHost,
        deadline: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Duration> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            let request = RegisterNodeRequest {
                protocol_version: PROTOCOL_VERSION,
                node: Some(node.clone()),
                objects: store.sealed_ids().iter().map(ObjectId::to_vec).collect(),
                actors: actors.running(),
                bundles: actors
                    .bundles()
                    .into_iter()
                    .map(|(group, index)| photon_proto::v1::BundleRef {
                        group_id: group.to_vec(),
                        bundle_index: index,
                    })
                    .collect(),
            };
            match self.client.clone().register_node(request).await {
                Ok(reply) => {
                    return Ok(Duration::from_millis(
                        reply.into_inner().heartbeat_interval_ms.max(10),
                    ));
                }
                Err(status) if status.code() == Code::Aborted => {
                    return Err(Error::DeclaredDead {
                        head: self.address.clone(),
                        message: status.message().to_string(),
                    });
                }
                Err(status) if is_refusal(status.code()) => {
                    return Err(Error::Refused {
                        head: self.address.clone(),
                        message: status.message().to_string(),
                    });
                }
                Err(status) => {
                    attempts += 1;
                    if deadline.is_some_and(|limit| started.elapsed() >= limit) {
                        return Err(Error::HeadUnreachable {
                            head: self.address.clone(),
                            waited: started.elapsed(),
                            message: status.message().to_string(),
                        });
                    }
                    if attempts == 1 || attempts.is_multiple_of(20) {
                        warn!(head = %self.address, attempts, error = status.message(), "cannot reach the head, retrying");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Err(Error::Stopped),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Tells the head that `node` now holds (or dropped) `object`.
    pub async fn update_location(
        &self,
        object: ObjectId,
        node: NodeId,
        added: bool,
    ) -> Result<(), Status> {
        let update = ObjectLocationUpdate {
            object_id: object.to_vec(),
            node_id: node.to_vec(),
            added,
        };
        self.client
            .clone()
            .update_object_location(update)
            .await
            .map(|_| ())
    }

    /// Hands lines a job's workers printed to the head, for the job's log.
    /// Best effort: a head that is away loses them from the job's log only
    /// (they stay in the workers' own files).
    pub async fn append_worker_logs(&self, job_id: String, data: Vec<u8>) {
        let lines = WorkerLogLines {
            job_id: job_id.clone(),
            data,
        };
        if let Err(status) = self.jobs.clone().append_worker_logs(lines).await {
            warn!(job = %job_id, error = status.message(), "cannot forward worker output to the head");
        }
    }

    /// Streams package `sha256` from the head.
    pub async fn download_package(
        &self,
        sha256: &str,
    ) -> Result<tonic::Streaming<photon_proto::v1::PackageChunk>, Status> {
        let request = photon_proto::v1::PackageRef {
            sha256: sha256.to_string(),
            size: 0,
        };
        Ok(self
            .jobs
            .clone()
            .download_package(request)
            .await?
            .into_inner())
    }

    /// Tells the head an owner's worker ended.
    pub async fn owner_died(&self, request: OwnerDiedRequest) -> Result<(), Status> {
        self.client.clone().owner_died(request).await.map(|_| ())
    }

    /// Tells the head an actor's worker ended.
    pub async fn report_actor_exit(&self, exit: ActorExit) -> Result<(), Status> {
        self.client
            .clone()
            .report_actor_exit(exit)
            .await
            .map(|_| ())
    }

    /// Every node the head knows, with its latest available resources.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, Status> {
        let reply = self
            .client
            .clone()
            .get_cluster_status(GetClusterStatusRequest {})
            .await?
            .into_inner();
        Ok(reply.nodes)
    }

    /// Live nodes holding `object`, with their raylet addresses.
    pub async fn locations(&self, object: ObjectId) -> Result<Vec<(NodeId, String)>, Status> {
        let request = GetObjectLocationsRequest {
            object_id: object.to_vec(),
        };
        let reply = self
            .client
            .clone()
            .get_object_locations(request)
            .await?
            .into_inner();
        Ok(reply
            .locations
            .into_iter()
            .filter_map(|l| Some((NodeId::from_slice(&l.node_id).ok()?, l.address)))
            .collect())
    }

    /// Keeps the node registered and heartbeating until `stop`, then tells
    /// the head it is leaving. Returns an error only when the head refuses the
    /// node (wrong version or token) or declared it dead.
    pub async fn stay_registered(
        &self,
        node: NodeInfo,
        store: ObjectStore,
        actors: &ActorHost,
        initial_deadline: Duration,
        registered: impl FnOnce(),
        stop: CancellationToken,
    ) -> Result<()> {
        let node_id = NodeId::from_slice(&node.node_id).expect("raylet builds a valid node id");
        let mut interval = self
            .register(&node, &store, actors, Some(initial_deadline), &stop)
            .await?;
        info!(node = %node_id, head = %self.address, "registered with the head");
        registered();
        loop {
            match self
                .heartbeat(&node, &store, actors, interval, &stop)
                .await?
            {
                StreamEnd::Stopped => return Ok(()),
                StreamEnd::Broken => {
                    warn!(head = %self.address, "lost the head, registering again");
                    interval = match self.register(&node, &store, actors, None, &stop).await {
                        Err(Error::Stopped) => return Ok(()),
                        other => other?,
                    };
                    info!(node = %node_id, "registered again");
                }
            }
        }
    }

    async fn heartbeat(
        &self,
        node: &NodeInfo,
        store: &ObjectStore,
        actors: &ActorHost,
        interval: Duration,
        stop: &CancellationToken,
    ) -> Result<StreamEnd> {
        let beat = |draining| {
            let available = actors.available();
            let stats = store.stats();
            Heartbeat {
                node_id: node.node_id.clone(),
                available: available.to_proto(),
                object_store_used: stats.used,
                draining,
                pending: actors.demand().summary(&available),
                store: Some(ObjectStoreUsage {
                    used: stats.used,
                    pinned: stats.pinned,
                    objects: stats.objects,
                    spilled_bytes: stats.spilled_bytes,
                    spilled_objects: stats.spilled_objects,
                }),
            }
        };
        let (sender, receiver) = mpsc::channel(4);
        sender.send(beat(false)).await.expect("receiver is alive");
        let mut replies = match self
            .client
            .clone()
            .heartbeats(ReceiverStream::new(receiver))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) if is_refusal(status.code()) => {
                return Err(Error::Refused {
                    head: self.address.clone(),
                    message: status.message().to_string(),
                });
            }
            Err(_) => return Ok(StreamEnd::Broken),
        };
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = sender.send(beat(true)).await;
                    drop(sender);
                    // The head ends its side once it has recorded the drain.
                    let _ = tokio::time::timeout(DRAIN_WAIT, async { while let Ok(Some(_)) = replies.message().await {} }).await;
                    return Ok(StreamEnd::Stopped);
                }
                _ = ticks.tick() => {
                    if sender.send(beat(false)).await.is_err() {
                        return Ok(StreamEnd::Broken);
                    }
                }
                reply = replies.message() => match reply {
                    Ok(Some(reply)) if reply.unknown_node => {
                        return Err(Error::DeclaredDead { head: self.address.clone(), message: reply.message });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Ok(StreamEnd::Broken),
                },
            }
        }
    }
}

enum StreamEnd {
    Stopped,
    Broken,
}

/// Codes that retrying cannot fix.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::FailedPrecondition
            | Code::Unauthenticated
            | Code::InvalidArgument
            | Code::PermissionDenied
    )
}
