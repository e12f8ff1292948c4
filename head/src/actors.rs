//! The actor table and placement.
//!
//! PENDING → ALIVE → (worker or node died) RESTARTING → ALIVE … → DEAD once
//! `max_restarts` is spent, or when killed. An actor that fits nowhere stays
//! PENDING with the reason in its record — never silently forever.
//!
//! Placement: GPU actors go to the live node with the least free GPU that
//! still fits (best fit, so fractional actors pack onto one GPU before opening
//! another); others follow a hybrid policy — pack onto nodes (in registration
//! order) until they are half used, then spread to the least used.

use std::collections::HashMap;
use std::sync::Mutex;

use photon_proto::v1::{ActorRecord, ActorState, NodeRecord, NodeState};
use photon_proto::{ActorId, NodeId, Quantity, ResourceSet, names};

/// Actors by id.
#[derive(Default)]
pub struct ActorTable {
    actors: Mutex<HashMap<ActorId, ActorRecord>>,
}

fn id_of(record: &ActorRecord) -> Option<ActorId> {
    ActorId::from_slice(&record.spec.as_ref()?.actor_id).ok()
}

impl ActorTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorId, ActorRecord>> {
        self.actors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads persisted records after a restart.
    pub fn restore(&self, records: Vec<ActorRecord>) {
        let mut actors = self.lock();
        for record in records {
            if let Some(id) = id_of(&record) {
                actors.insert(id, record);
            }
        }
    }

    /// Adds a new actor; false if the id exists.
    pub fn insert(&self, id: ActorId, record: ActorRecord) -> bool {
        let mut actors = self.lock();
        if actors.contains_key(&id) {
            return false;
        }
        actors.insert(id, record);
        true
    }

    /// One actor.
    pub fn get(&self, id: ActorId) -> Option<ActorRecord> {
        self.lock().get(&id).cloned()
    }

    /// Changes one actor and returns the new record.
    pub fn update(
        &self,
        id: ActorId,
        change: impl FnOnce(&mut ActorRecord),
    ) -> Option<ActorRecord> {
        let mut actors = self.lock();
        let record = actors.get_mut(&id)?;
        change(record);
        Some(record.clone())
    }

    /// The actor named `name` (a live one before dead ones).
    pub fn find_by_name(&self, name: &str) -> Option<ActorRecord> {
        if name.is_empty() {
            return None;
        }
        // A name may have belonged to dead actors before: the live one wins.
        let mut matches: Vec<ActorRecord> = self
            .all()
            .into_iter()
            .filter(|r| r.spec.as_ref().is_some_and(|s| s.name == name))
            .collect();
        matches.sort_by_key(|r| r.state == ActorState::Dead as i32);
        matches.into_iter().next()
    }

    /// Every actor record.
    pub fn all(&self) -> Vec<ActorRecord> {
        self.lock().values().cloned().collect()
    }

    /// Actors waiting for a node (PENDING or RESTARTING).
    pub fn waiting(&self) -> Vec<(ActorId, ActorRecord)> {
        self.lock()
            .iter()
            .filter(|(_, r)| {
                r.state == ActorState::Pending as i32 || r.state == ActorState::Restarting as i32
            })
            .map(|(id, r)| (*id, r.clone()))
            .collect()
    }

    /// Every live actor.
    pub fn alive_ids(&self) -> std::collections::HashSet<ActorId> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.state == ActorState::Alive as i32)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Live actors on `node`.
    pub fn on_node(&self, node: NodeId) -> Vec<ActorId> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.state == ActorState::Alive as i32 && r.node_id == node.to_vec())
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Marks an actor whose worker (or node) ended: restarted if it has restarts
/// left, else dead.
pub fn on_actor_lost(record: &mut ActorRecord, reason: &str) {
    let max_restarts = record.spec.as_ref().map_or(0, |s| s.max_restarts);
    record.node_id.clear();
    record.node_address.clear();
    record.worker_id.clear();
    record.pid = 0;
    record.cuda_visible_devices.clear();
    if record.restarts < max_restarts {
        record.restarts += 1;
        record.state = ActorState::Restarting as i32;
        record.reason = format!("restart {} of {max_restarts}: {reason}", record.restarts);
    } else {
        record.state = ActorState::Dead as i32;
        record.reason = if max_restarts == 0 {
            format!("{reason} (max_restarts is 0)")
        } else {
            format!("{reason} (all {max_restarts} restarts used)")
        };
    }
}

fn utilization(node: &NodeRecord) -> f64 {
    let info = node.info.as_ref();
    let total = info
        .map(|i| ResourceSet::from_proto(&i.total))
        .unwrap_or_default();
    let available = ResourceSet::from_proto(&node.available);
    let cpu_total = total.get(names::CPU).units();
    if cpu_total == 0 {
        return 1.0;
    }
    1.0 - available.get(names::CPU).units() as f64 / cpu_total as f64
}

/// Chooses a node for `request` among `nodes` (sorted by registration), or
/// says why none fits.
pub fn choose_node<'a>(
    request: &ResourceSet,
    nodes: &'a [NodeRecord],
) -> Result<&'a NodeRecord, String> {
    let alive: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Alive as i32)
        .collect();
    if alive.is_empty() {
        return Err("no live nodes in the cluster".into());
    }
    let total_of = |n: &NodeRecord| {
        n.info
            .as_ref()
            .map(|i| ResourceSet::from_proto(&i.total))
            .unwrap_or_default()
    };
    let feasible: Vec<&NodeRecord> = alive
        .iter()
        .copied()
        .filter(|n| total_of(n).contains(request))
        .collect();
    if feasible.is_empty() {
        let (name, wanted, best) = alive
            .iter()
            .filter_map(|n| total_of(n).shortfall(request))
            .max_by_key(|(_, _, have)| *have)
            .expect("no feasible node means every node falls short");
        return Err(format!(
            "infeasible: it needs {name} {wanted} but the most any of the {} live node(s) has in total is {best}; add a node with it",
            alive.len()
        ));
    }
    let fits: Vec<&NodeRecord> = feasible
        .iter()
        .copied()
        .filter(|n| ResourceSet::from_proto(&n.available).contains(request))
        .collect();
    if fits.is_empty() {
        return Err(format!(
            "waiting for resources: {request} is not free on any of the {} node(s) that could run it",
            feasible.len()
        ));
    }
    let chosen = if request.get(names::GPU) > Quantity::ZERO {
        fits.iter()
            .copied()
            .min_by_key(|n| ResourceSet::from_proto(&n.available).get(names::GPU))
    } else {
        fits.iter()
            .copied()
            .find(|n| utilization(n) < 0.5)
            .or_else(|| {
                fits.iter()
                    .copied()
                    .min_by(|a, b| utilization(a).total_cmp(&utilization(b)))
            })
    };
    Ok(chosen.expect("fits is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use photon_proto::v1::{ActorSpec, NodeInfo};

    fn node(cpus: i64, gpus: i64, free_gpu_units: i64, custom: Option<&str>) -> NodeRecord {
        let mut total = ResourceSet::new()
            .with("CPU", Quantity::whole(cpus))
            .with("GPU", Quantity::whole(gpus));
        if let Some(name) = custom {
            total.set(name, Quantity::whole(1));
        }
        let mut available = total.clone();
        available.set("GPU", Quantity::from_units(free_gpu_units));
        NodeRecord {
            info: Some(NodeInfo {
                node_id: NodeId::random().to_vec(),
                total: total.to_proto(),
                ..Default::default()
            }),
            state: NodeState::Alive as i32,
            available: available.to_proto(),
            ..Default::default()
        }
    }

    fn gpu(amount: f64) -> ResourceSet {
        ResourceSet::new().with("GPU", Quantity::from_f64("GPU", amount).unwrap())
    }

    #[test]
    fn gpu_actors_go_to_the_fullest_gpu_that_fits() {
        let nodes = [
            node(2, 1, 10_000, None),
            node(2, 1, 2_500, None),
            node(2, 1, 5_000, None),
        ];
        assert!(std::ptr::eq(
            choose_node(&gpu(0.25), &nodes).unwrap(),
            &nodes[1]
        ));
        assert!(std::ptr::eq(
            choose_node(&gpu(0.5), &nodes).unwrap(),
            &nodes[2]
        ));
    }

    #[test]
    fn custom_resources_only_one_node_has_decide_the_node() {
        let nodes = [
            node(2, 0, 0, None),
            node(2, 0, 0, None),
            node(2, 0, 0, Some("special")),
        ];
        let request = ResourceSet::new().with("special", Quantity::whole(1));
        assert!(std::ptr::eq(
            choose_node(&request, &nodes).unwrap(),
            &nodes[2]
        ));
    }

    #[test]
    fn reasons_tell_infeasible_from_busy() {
        let nodes = [node(2, 1, 0, None)];
        let busy = choose_node(&gpu(0.5), &nodes).unwrap_err();
        assert!(
            busy.starts_with("waiting for resources: GPU: 0.5 is not free"),
            "{busy}"
        );
        let infeasible = choose_node(&gpu(2.0), &nodes).unwrap_err();
        assert!(
            infeasible.contains("infeasible")
                && infeasible.contains("GPU 2")
                && infeasible.contains("is 1"),
            "{infeasible}"
        );
        assert_eq!(
            choose_node(&gpu(1.0), &[]).unwrap_err(),
            "no live nodes in the cluster"
        );
    }

    #[test]
    fn lost_actors_restart_until_their_budget_is_spent() {
        let mut record = ActorRecord {
            spec: Some(ActorSpec {
                max_restarts: 1,
                ..Default::default()
            }),
            state: ActorState::Alive as i32,
            node_id: vec![1],
            ..Default::default()
        };
        on_actor_lost(&mut record, "its node died");
        assert_eq!(
            (record.state, record.restarts),
            (ActorState::Restarting as i32, 1)
        );
        assert!(
            record.node_id.is_empty() && record.reason.contains("restart 1 of 1: its node died")
        );
        record.state = ActorState::Alive as i32;
        on_actor_lost(&mut record, "its worker exited with code 1");
        assert_eq!(record.state, ActorState::Dead as i32);
        assert!(
            record.reason.contains("all 1 restarts used"),
            "{}",
            record.reason
        );
    }
}
