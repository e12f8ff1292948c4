//! Placing waiting actors on raylets and reacting when they are lost.

use std::time::Duration;

use photon_proto::auth::AttachToken;
use photon_proto::placement::choose_node;
use photon_proto::v1::raylet_client::RayletClient;
use photon_proto::v1::{ActorRecord, ActorState, RunningActor, StopActorRequest};
use photon_proto::{ActorId, NodeId, ResourceSet};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::actors::on_actor_lost;
use crate::service::HeadState;

/// A client of one raylet.
pub type RayletClientHandle = RayletClient<InterceptedService<Channel, AttachToken>>;
type Raylet = RayletClientHandle;

const START_TIMEOUT: Duration = Duration::from_secs(10);

impl HeadState {
    pub(crate) fn raylet(&self, address: &str) -> Result<Raylet, String> {
        let mut clients = self.raylets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = photon_proto::tls::endpoint(address)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(START_TIMEOUT);
        let client =
            RayletClient::with_interceptor(endpoint.connect_lazy(), AttachToken::new(&self.token)?);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) async fn save_actor(&self, id: ActorId, record: ActorRecord) {
        self.persist(format!("actor {id}"), move |db| db.save_actor(id, &record))
            .await;
    }

    /// Tries to place every waiting actor, one pass at a time.
    pub(crate) async fn place_waiting(&self) {
        let _pass = self.placement.lock().await;
        // Groups first: actors may wait for theirs.
        self.place_waiting_groups().await;
        let mut waiting = self.actors.waiting();
        waiting.sort_by_key(|(_, record)| {
            record
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default()
        });
        for (id, record) in waiting {
            self.place(id, record).await;
        }
    }

    async fn place(&self, id: ActorId, record: ActorRecord) {
        let spec = record.spec.clone().unwrap_or_default();
        let request = ResourceSet::from_proto(&spec.resources);
        let target = match &spec.placement {
            // Its bundle's resources are reserved already, on the bundle's node.
            Some(bundle) => self.bundle_node(bundle),
            None => {
                let nodes = self.nodes.snapshot();
                choose_node(&request, &nodes).map(|n| n.info.clone().unwrap_or_default())
            }
        };
        let node = match target {
            Ok(node) => node,
            Err(reason) => {
                // A restarting actor keeps why it restarts; a pending one shows why it waits.
                if record.reason != reason
                    && !record.reason.starts_with("restart")
                    && let Some(updated) = self.actors.update(id, |r| r.reason = reason.clone())
                {
                    self.save_actor(id, updated).await;
                }
                return;
            }
        };
        let node_id = NodeId::from_slice(&node.node_id).expect("registered nodes have valid ids");
        if spec.placement.is_none() {
            self.nodes.reserve(node_id, &request);
        }
        let started = match self.raylet(&node.address) {
            Ok(mut raylet) => raylet
                .start_actor(spec)
                .await
                .map_err(|s| (s.code(), s.message().to_string())),
            Err(err) => Err((Code::InvalidArgument, err)),
        };
        let updated = match started {
            Ok(reply) => {
                let reply = reply.into_inner();
                let (pid, gpus) = (reply.pid, reply.cuda_visible_devices.clone());
                let mut ended = false;
                let updated = self.actors.update(id, |r| {
                    if r.state == ActorState::Dead as i32 {
                        ended = true;
                        return;
                    }
                    r.state = ActorState::Alive as i32;
                    r.node_id = node.node_id.clone();
                    r.node_address = node.address.clone();
                    r.worker_id = reply.worker_id;
                    r.pid = reply.pid;
                    r.cuda_visible_devices = reply.cuda_visible_devices;
                    r.reason.clear();
                });
                if ended {
                    // Killed while the raylet started it: stop the new
                    // worker rather than bring the actor back to life.
                    info!(actor = %id, node = %node_id, "actor ended while it was placed: stopping its worker");
                    if let Ok(mut raylet) = self.raylet(&node.address) {
                        let _ = raylet
                            .stop_actor(StopActorRequest {
                                actor_id: id.to_vec(),
                            })
                            .await;
                    }
                    return;
                }
                info!(actor = %id, node = %node_id, pid, %gpus, "actor placed");
                updated
            }
            Err((code, message)) => {
                // The head's view was stale (or the node is going away): try again next pass.
                if code != Code::ResourceExhausted {
                    warn!(actor = %id, node = %node_id, %message, "cannot start actor");
                }
                let reason = if code == Code::ResourceExhausted {
                    format!(
                        "waiting for resources: node {} has no room now ({message})",
                        node.address
                    )
                } else {
                    format!("node {} could not start it: {message}", node.address)
                };
                self.actors.update(id, |r| {
                    if !r.reason.starts_with("restart") {
                        r.reason = reason;
                    }
                })
            }
        };
        if let Some(updated) = updated {
            self.save_actor(id, updated).await;
        }
    }

    /// An actor's worker or node ended: restart it or declare it dead.
    pub(crate) async fn actor_lost(&self, id: ActorId, reason: &str) {
        let Some(updated) = self.actors.update(id, |r| on_actor_lost(r, reason)) else {
            return;
        };
        warn!(actor = %id, state = updated.state, reason = %updated.reason, "actor lost");
        self.save_actor(id, updated).await;
    }

    /// Ends an actor for good (DEAD, `reason` recorded) and stops its worker.
    pub(crate) async fn end_actor(&self, id: ActorId, reason: &str) -> Option<ActorRecord> {
        let (previous, updated) = self.mark_actor_dead(id, reason).await?;
        if previous.state == ActorState::Alive as i32
            && let Ok(mut raylet) = self.raylet(&previous.node_address)
            && let Err(status) = raylet
                .stop_actor(StopActorRequest {
                    actor_id: id.to_vec(),
                })
                .await
        {
            warn!(actor = %id, error = status.message(), "cannot stop the actor's worker");
        }
        Some(updated)
    }

    /// Records an actor as DEAD for `reason`, so its worker's end (which the
    /// caller brings about) restarts nothing. Returns the record before and after.
    pub(crate) async fn mark_actor_dead(
        &self,
        id: ActorId,
        reason: &str,
    ) -> Option<(ActorRecord, ActorRecord)> {
        let previous = self.actors.get(id)?;
        let updated = self.actors.update(id, |r| {
            r.state = ActorState::Dead as i32;
            r.reason = reason.into();
        })?;
        self.save_actor(id, updated.clone()).await;
        Some((previous, updated))
    }

    /// A node died: its actors are lost with it.
    pub(crate) async fn node_lost(&self, node: NodeId, reason: &str) {
        for actor in self.actors.on_node(node) {
            self.actor_lost(actor, &format!("its node {node} died: {reason}"))
                .await;
        }
    }

    /// A raylet (re-)registered and listed the actors it runs: adopt those the
    /// head was still placing, stop those that are no longer its to run, and —
    /// after a head restart — treat actors recorded alive on this node that it
    /// no longer runs as lost (their workers ended while the head was away).
    pub(crate) async fn reconcile_actors(
        &self,
        node: NodeId,
        address: &str,
        running: Vec<RunningActor>,
    ) {
        let _pass = self.placement.lock().await;
        let mut reported = std::collections::HashSet::new();
        for actor in running {
            let Ok(id) = ActorId::from_slice(&actor.actor_id) else {
                continue;
            };
            reported.insert(id);
            let ours = self.actors.get(id).is_some_and(|r| {
                r.state == ActorState::Pending as i32
                    || r.state == ActorState::Restarting as i32
                    || (r.state == ActorState::Alive as i32 && r.node_id == node.to_vec())
            });
            if ours {
                let adopted = self.actors.update(id, |r| {
                    r.state = ActorState::Alive as i32;
                    r.node_id = node.to_vec();
                    r.node_address = address.to_string();
                    r.worker_id = actor.worker_id;
                    r.pid = actor.pid;
                    r.cuda_visible_devices = actor.cuda_visible_devices;
                    r.reason.clear();
                });
                if let Some(adopted) = adopted {
                    self.save_actor(id, adopted).await;
                }
            } else if let Ok(mut raylet) = self.raylet(address) {
                info!(actor = %id, node = %node, "stopping an actor the head no longer places there");
                let _ = raylet
                    .stop_actor(StopActorRequest {
                        actor_id: id.to_vec(),
                    })
                    .await;
            }
        }
        let lost: Vec<ActorId> = {
            let mut unconfirmed = self
                .unconfirmed_actors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let on_node: Vec<ActorId> = unconfirmed
                .iter()
                .copied()
                .filter(|id| {
                    self.actors
                        .get(*id)
                        .is_some_and(|r| r.node_id == node.to_vec())
                })
                .collect();
            for id in &on_node {
                unconfirmed.remove(id);
            }
            on_node
                .into_iter()
                .filter(|id| !reported.contains(id))
                .collect()
        };
        for id in lost {
            self.actor_lost(id, "its worker ended while the head was away")
                .await;
        }
    }
}
