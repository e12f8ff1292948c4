//! The actor table and placement.
//!
//! PENDING → ALIVE → (worker or node died) RESTARTING → ALIVE … → DEAD once
//! `max_restarts` is spent, or when killed. An actor that fits nowhere stays
//! PENDING with the reason in its record — never silently forever.
//!
//! Placement follows [`photon_proto::placement::choose_node`], the policy
//! raylets also use for spillback.

use std::collections::HashMap;
use std::sync::Mutex;

use photon_proto::v1::{ActorRecord, ActorSpec, ActorState};
use photon_proto::{ActorId, NodeId};

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

    /// Actors not DEAD whose spec `matches`.
    pub fn live_where(&self, matches: impl Fn(&ActorSpec) -> bool) -> Vec<ActorId> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.state != ActorState::Dead as i32)
            .filter(|(_, r)| r.spec.as_ref().is_some_and(&matches))
            .map(|(id, _)| *id)
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use photon_proto::v1::ActorSpec;

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
