//! Placement groups: bundles of resources reserved together on the nodes the
//! group's strategy picks ([`photon_proto::placement::place_bundles`]), all
//! of them or none.
//!
//! PENDING (with the reason) → CREATED (each bundle reserved on its raylet)
//! → REMOVED (bundles given back, and what ran in them ended). A bundle lost
//! with its node puts the group back to PENDING until that bundle is placed
//! again; the other bundles, and what runs in them, stay. Tasks and actors in
//! a bundle are granted from its reservation on its node.

use std::collections::HashMap;
use std::sync::Mutex;

use photon_proto::placement::{place_bundles, strategy_name};
use photon_proto::v1::{
    BundleRef, NodeInfo, NodeState, PlacementGroupRecord, PlacementGroupState, PlacementStrategy,
    ReleaseBundleRequest, ReserveBundleRequest,
};
use photon_proto::{JobId, NodeId, PlacementGroupId, ResourceSet};
use tracing::{info, warn};

use crate::service::HeadState;

/// Placement groups by id.
#[derive(Default)]
pub struct PlacementGroupTable {
    groups: Mutex<HashMap<PlacementGroupId, PlacementGroupRecord>>,
}

fn id_of(record: &PlacementGroupRecord) -> Option<PlacementGroupId> {
    PlacementGroupId::from_slice(&record.spec.as_ref()?.group_id).ok()
}

impl PlacementGroupTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PlacementGroupId, PlacementGroupRecord>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads persisted records after a restart.
    pub fn restore(&self, records: Vec<PlacementGroupRecord>) {
        let mut groups = self.lock();
        for record in records {
            if let Some(id) = id_of(&record) {
                groups.insert(id, record);
            }
        }
    }

    /// Adds a new group; false if the id exists.
    pub fn insert(&self, id: PlacementGroupId, record: PlacementGroupRecord) -> bool {
        let mut groups = self.lock();
        if groups.contains_key(&id) {
            return false;
        }
        groups.insert(id, record);
        true
    }

    pub fn get(&self, id: PlacementGroupId) -> Option<PlacementGroupRecord> {
        self.lock().get(&id).cloned()
    }

    /// Changes one group and returns the new record.
    pub fn update(
        &self,
        id: PlacementGroupId,
        change: impl FnOnce(&mut PlacementGroupRecord),
    ) -> Option<PlacementGroupRecord> {
        let mut groups = self.lock();
        let record = groups.get_mut(&id)?;
        change(record);
        Some(record.clone())
    }

    /// Every group, by name then id.
    pub fn all(&self) -> Vec<PlacementGroupRecord> {
        let mut all: Vec<PlacementGroupRecord> = self.lock().values().cloned().collect();
        all.sort_by_key(|r| {
            r.spec
                .as_ref()
                .map(|s| (s.name.clone(), s.group_id.clone()))
                .unwrap_or_default()
        });
        all
    }

    fn with_state(
        &self,
        state: PlacementGroupState,
    ) -> Vec<(PlacementGroupId, PlacementGroupRecord)> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.state == state as i32)
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }
}

/// The resources of each bundle.
fn bundles_of(record: &PlacementGroupRecord) -> Vec<ResourceSet> {
    record
        .spec
        .as_ref()
        .map(|s| {
            s.bundles
                .iter()
                .map(|b| ResourceSet::from_proto(&b.resources))
                .collect()
        })
        .unwrap_or_default()
}

fn strategy_of(record: &PlacementGroupRecord) -> PlacementStrategy {
    record
        .spec
        .as_ref()
        .and_then(|s| PlacementStrategy::try_from(s.strategy).ok())
        .unwrap_or(PlacementStrategy::Pack)
}

fn bundle_ref(group: PlacementGroupId, index: usize) -> BundleRef {
    BundleRef {
        group_id: group.to_vec(),
        bundle_index: index as u32,
    }
}

impl HeadState {
    pub(crate) async fn save_group(&self, id: PlacementGroupId, record: PlacementGroupRecord) {
        self.persist(format!("placement group {id}"), move |db| {
            db.save_placement_group(id, &record)
        })
        .await;
    }

    /// Tries to place every pending group. Runs inside a placement pass
    /// (before actors, which may wait on groups).
    pub(crate) async fn place_waiting_groups(&self) {
        for (id, record) in self
            .placement_groups
            .with_state(PlacementGroupState::Pending)
        {
            self.place_group(id, record).await;
        }
    }

    /// Places the bundles of `id` that have no node: on the nodes the
    /// strategy allows, reserving each on its raylet; all or none.
    async fn place_group(&self, id: PlacementGroupId, record: PlacementGroupRecord) {
        let bundles = bundles_of(&record);
        let strategy = strategy_of(&record);
        let mut nodes_of: Vec<Vec<u8>> = record.bundle_nodes.clone();
        nodes_of.resize(bundles.len(), Vec::new());
        let missing: Vec<usize> = (0..bundles.len())
            .filter(|&i| nodes_of[i].is_empty())
            .collect();
        let held: Vec<&Vec<u8>> = nodes_of.iter().filter(|n| !n.is_empty()).collect();
        // Bundles still held constrain where the missing ones may go.
        let nodes: Vec<_> = self
            .nodes
            .snapshot()
            .into_iter()
            .filter(|n| {
                let node = n.info.as_ref().map(|i| &i.node_id);
                match strategy {
                    PlacementStrategy::StrictSpread => node.is_none_or(|id| !held.contains(&id)),
                    PlacementStrategy::StrictPack => {
                        held.is_empty() || node.is_some_and(|id| held.contains(&id))
                    }
                    _ => true,
                }
            })
            .collect();
        let wanted: Vec<(usize, ResourceSet)> =
            missing.iter().map(|&i| (i, bundles[i].clone())).collect();
        let chosen = match place_bundles(&wanted, strategy, &nodes) {
            Ok(chosen) => chosen,
            Err(reason) => {
                self.group_waits(id, &record, reason).await;
                return;
            }
        };
        let mut reserved: Vec<(usize, NodeInfo)> = Vec::new();
        for (&bundle, &node) in missing.iter().zip(&chosen) {
            let info = nodes[node].info.clone().unwrap_or_default();
            let request = ReserveBundleRequest {
                bundle: Some(bundle_ref(id, bundle)),
                resources: bundles[bundle].to_proto(),
            };
            let outcome = match self.raylet(&info.address) {
                Ok(mut raylet) => raylet
                    .reserve_bundle(request)
                    .await
                    .map_err(|s| (s.code(), s.message().to_string())),
                Err(err) => Err((tonic::Code::InvalidArgument, err)),
            };
            if let Err((code, message)) = outcome {
                // Give back what this pass took.
                for (bundle, info) in &reserved {
                    self.release_bundle(id, *bundle, &info.address).await;
                }
                let reason = if code == tonic::Code::ResourceExhausted {
                    format!(
                        "waiting for resources: node {} has no room now for bundle {bundle} ({message})",
                        info.address
                    )
                } else {
                    // It may have reserved the bundle before its reply was lost.
                    self.release_bundle(id, bundle, &info.address).await;
                    format!(
                        "node {} could not reserve bundle {bundle}: {message}",
                        info.address
                    )
                };
                self.group_waits(id, &record, reason).await;
                return;
            }
            if let Ok(node_id) = NodeId::from_slice(&info.node_id) {
                self.nodes.reserve(node_id, &bundles[bundle]);
            }
            reserved.push((bundle, info));
        }
        // Only what this pass reserved is written, and only on nodes still
        // alive: a node that died meanwhile had its bundles cleared.
        let alive: Vec<Vec<u8>> = self
            .nodes
            .snapshot()
            .into_iter()
            .filter(|n| n.state == NodeState::Alive as i32)
            .filter_map(|n| n.info.map(|i| i.node_id))
            .collect();
        let updated = self.placement_groups.update(id, |r| {
            if r.state != PlacementGroupState::Pending as i32 {
                return;
            }
            r.bundle_nodes.resize(bundles.len(), Vec::new());
            r.bundle_addresses.resize(bundles.len(), String::new());
            for (bundle, info) in &reserved {
                if alive.contains(&info.node_id) {
                    r.bundle_nodes[*bundle] = info.node_id.clone();
                    r.bundle_addresses[*bundle] = info.address.clone();
                }
            }
            if r.bundle_nodes.iter().all(|n| !n.is_empty()) {
                r.state = PlacementGroupState::Created as i32;
                r.reason.clear();
            }
        });
        if let Some(updated) = updated {
            if updated.state == PlacementGroupState::Created as i32 {
                info!(group = %id, strategy = strategy_name(strategy), nodes = ?updated.bundle_addresses, "placement group created");
            }
            self.save_group(id, updated).await;
        }
    }

    /// Records why a group still waits (when the reason changed).
    async fn group_waits(
        &self,
        id: PlacementGroupId,
        record: &PlacementGroupRecord,
        reason: String,
    ) {
        if record.reason == reason {
            return;
        }
        if let Some(updated) = self.placement_groups.update(id, |r| r.reason = reason) {
            self.save_group(id, updated).await;
        }
    }

    async fn release_bundle(&self, id: PlacementGroupId, bundle: usize, address: &str) {
        let request = ReleaseBundleRequest {
            bundle: Some(bundle_ref(id, bundle)),
        };
        match self.raylet(address) {
            Ok(mut raylet) => {
                if let Err(status) = raylet.release_bundle(request).await {
                    warn!(group = %id, bundle, node = address, error = status.message(), "cannot release a bundle");
                }
            }
            Err(err) => warn!(group = %id, bundle, node = address, %err, "cannot release a bundle"),
        }
    }

    /// Removes a group: its actors end (DEAD, so none restarts), its
    /// bundles go back to their nodes, which end the workers in them.
    pub(crate) async fn remove_group(
        &self,
        id: PlacementGroupId,
        why: &str,
    ) -> Option<PlacementGroupRecord> {
        let _pass = self.placement.lock().await;
        let previous = self.placement_groups.get(id)?;
        if previous.state == PlacementGroupState::Removed as i32 {
            return Some(previous);
        }
        let updated = self.placement_groups.update(id, |r| {
            r.state = PlacementGroupState::Removed as i32;
            r.reason = why.to_string();
        })?;
        self.save_group(id, updated.clone()).await;
        let actors = self.actors.live_where(|spec| {
            spec.placement
                .as_ref()
                .is_some_and(|p| p.group_id == id.to_vec())
        });
        let reason = format!("its placement group {id} was removed: {why}");
        for actor in actors {
            self.mark_actor_dead(actor, &reason).await;
        }
        for (bundle, address) in previous.bundle_addresses.iter().enumerate() {
            if !address.is_empty() {
                self.release_bundle(id, bundle, address).await;
            }
        }
        info!(group = %id, %why, "placement group removed");
        Some(updated)
    }

    /// Removes the groups a job made (it ended).
    pub(crate) async fn remove_groups_of_job(&self, job: JobId, why: &str) {
        let groups: Vec<PlacementGroupId> = self
            .placement_groups
            .all()
            .into_iter()
            .filter(|r| r.state != PlacementGroupState::Removed as i32)
            .filter(|r| r.spec.as_ref().is_some_and(|s| s.job_id == job.to_vec()))
            .filter_map(|r| id_of(&r))
            .collect();
        for id in groups {
            self.remove_group(id, why).await;
        }
    }

    /// A node died: the bundles it held are placed again (the group is
    /// PENDING until they are); the others stay where they are, and what
    /// runs in them goes on.
    pub(crate) async fn groups_lost_with_node(&self, node: NodeId, reason: &str) {
        let node = node.to_vec();
        for record in self.placement_groups.all() {
            let Some(id) = id_of(&record) else { continue };
            if !record.bundle_nodes.contains(&node) {
                continue;
            }
            let updated = self.placement_groups.update(id, |r| {
                // Removed meanwhile: it stays removed.
                if r.state == PlacementGroupState::Removed as i32 {
                    return;
                }
                let lost: Vec<usize> = (0..r.bundle_nodes.len())
                    .filter(|&i| r.bundle_nodes[i] == node)
                    .collect();
                for &i in &lost {
                    r.bundle_nodes[i].clear();
                    r.bundle_addresses[i].clear();
                }
                r.state = PlacementGroupState::Pending as i32;
                r.reason = format!(
                    "waiting to place bundle(s) {lost:?} again: their node died ({reason})"
                );
            });
            if let Some(updated) = updated {
                warn!(group = %id, reason = %updated.reason, "placement group lost bundles with a node");
                self.save_group(id, updated).await;
            }
        }
    }

    /// A raylet (re-)registered listing the bundles it holds: those the head
    /// does not record on that node (a reservation whose reply was lost, a
    /// group removed while the node was away) are released.
    pub(crate) async fn reconcile_bundles(
        &self,
        node: NodeId,
        address: &str,
        held: Vec<BundleRef>,
    ) {
        let node = node.to_vec();
        for bundle in held {
            let Ok(id) = PlacementGroupId::from_slice(&bundle.group_id) else {
                continue;
            };
            let index = bundle.bundle_index as usize;
            let ours = self.placement_groups.get(id).is_some_and(|r| {
                r.state != PlacementGroupState::Removed as i32
                    && r.bundle_nodes.get(index) == Some(&node)
            });
            if !ours {
                info!(group = %id, bundle = index, node = address, "releasing a bundle the head does not place there");
                self.release_bundle(id, index, address).await;
            }
        }
    }

    /// Where an actor in bundle `placement` goes: its bundle's node (once
    /// that bundle is placed, even while others of a pending group are
    /// not), or why it waits.
    pub(crate) fn bundle_node(&self, placement: &BundleRef) -> Result<NodeInfo, String> {
        let id = PlacementGroupId::from_slice(&placement.group_id).map_err(|e| e.to_string())?;
        let Some(record) = self.placement_groups.get(id) else {
            return Err(format!("infeasible: placement group {id} does not exist"));
        };
        let index = placement.bundle_index as usize;
        if record.state == PlacementGroupState::Removed as i32 {
            return Err(format!("infeasible: placement group {id} was removed"));
        }
        let node = record.bundle_nodes.get(index).cloned().unwrap_or_default();
        if node.is_empty() {
            return Err(format!(
                "waiting for placement group {id}: {}",
                record.reason
            ));
        }
        self.nodes
            .snapshot()
            .into_iter()
            .find(|n| {
                n.state == NodeState::Alive as i32
                    && n.info.as_ref().is_some_and(|i| i.node_id == node)
            })
            .and_then(|n| n.info)
            .ok_or_else(|| {
                format!("waiting for bundle {index} of placement group {id}: its node is gone")
            })
    }
}

/// Checks a new group's spec; the message says what to fix.
pub(crate) fn validate(
    record: &photon_proto::v1::PlacementGroupSpec,
) -> Result<PlacementGroupId, String> {
    let id = PlacementGroupId::from_slice(&record.group_id).map_err(|e| e.to_string())?;
    if record.bundles.is_empty() {
        return Err(format!("placement group {id} has no bundles"));
    }
    if PlacementStrategy::try_from(record.strategy).is_err() {
        return Err(format!(
            "placement group {id} has an unknown strategy {}",
            record.strategy
        ));
    }
    for (index, bundle) in record.bundles.iter().enumerate() {
        let resources = ResourceSet::from_proto(&bundle.resources);
        if resources.iter().all(|(_, q)| q.units() == 0) {
            return Err(format!(
                "bundle {index} of placement group {id} asks for nothing; give it resources such as CPU or GPU"
            ));
        }
        if let Some((name, amount)) = resources.iter().find(|(_, q)| q.units() < 0) {
            return Err(format!(
                "bundle {index} of placement group {id} asks for a negative amount {amount} of {name}"
            ));
        }
        let gpus = resources.get(photon_proto::names::GPU);
        if gpus > photon_proto::Quantity::whole(1) && !gpus.is_whole() {
            return Err(format!(
                "bundle {index} of placement group {id} asks for {gpus} GPUs: above 1 GPU, whole numbers only"
            ));
        }
    }
    Ok(id)
}
