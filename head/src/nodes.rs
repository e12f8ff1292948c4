//! The node table: who is in the cluster, what they have, and whether they
//! are alive. Liveness is decided here (heartbeat timeout, broken stream +
//! failed probe, clean drain); every change of state is persisted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use photon_proto::NodeId;
use photon_proto::v1::{Heartbeat, NodeInfo, NodeRecord, NodeState};
use tracing::{info, warn};

/// One node as the head tracks it in memory.
struct NodeEntry {
    record: NodeRecord,
    last_heartbeat: Instant,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The node id belongs to a node declared dead.
    #[error(
        "node {node} was declared dead ({reason}); a dead node cannot come back: it rejoins as a new node"
    )]
    Dead {
        /// The node.
        node: NodeId,
        /// Why it was declared dead.
        reason: String,
    },
}

/// The in-memory node table.
#[derive(Default)]
pub struct NodeTable {
    nodes: Mutex<HashMap<NodeId, NodeEntry>>,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NodeTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, NodeEntry>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads persisted records after a restart. Nodes that were alive get a
    /// full heartbeat timeout from now to reconnect before they are declared dead.
    pub fn restore(&self, records: Vec<NodeRecord>) {
        let mut nodes = self.lock();
        for record in records {
            let Some(id) = record
                .info
                .as_ref()
                .and_then(|info| NodeId::from_slice(&info.node_id).ok())
            else {
                continue;
            };
            nodes.insert(
                id,
                NodeEntry {
                    record,
                    last_heartbeat: Instant::now(),
                },
            );
        }
    }

    /// Adds a node, or refreshes one that re-registers (e.g. after a head
    /// restart). Returns the record to persist.
    pub fn register(&self, id: NodeId, info: NodeInfo) -> Result<NodeRecord, RegisterError> {
        let mut nodes = self.lock();
        if let Some(existing) = nodes.get(&id)
            && existing.record.state == NodeState::Dead as i32
        {
            return Err(RegisterError::Dead {
                node: id,
                reason: existing.record.death_reason.clone(),
            });
        }
        let registered_at = nodes
            .get(&id)
            .map_or_else(unix_ms, |existing| existing.record.registered_at_unix_ms);
        let record = NodeRecord {
            available: info.total.clone(),
            info: Some(info),
            state: NodeState::Alive as i32,
            registered_at_unix_ms: registered_at,
            ..Default::default()
        };
        nodes.insert(
            id,
            NodeEntry {
                record: record.clone(),
                last_heartbeat: Instant::now(),
            },
        );
        Ok(record)
    }

    /// Records a heartbeat. `Err` says why the node must not continue.
    pub fn heartbeat(&self, id: NodeId, heartbeat: &Heartbeat) -> Result<(), String> {
        let mut nodes = self.lock();
        match nodes.get_mut(&id) {
            None => Err(format!(
                "node {id} is not registered with this head; register first"
            )),
            Some(entry) if entry.record.state == NodeState::Dead as i32 => Err(format!(
                "node {id} was declared dead ({}); it rejoins as a new node",
                entry.record.death_reason
            )),
            Some(entry) => {
                entry.last_heartbeat = Instant::now();
                entry.record.available = heartbeat.available.clone();
                entry.record.object_store_used = heartbeat.object_store_used;
                entry.record.pending = heartbeat.pending.clone();
                entry.record.store = heartbeat.store;
                Ok(())
            }
        }
    }

    /// Declares a live node dead; returns the record to persist, or `None` if
    /// it was not alive.
    pub fn mark_dead(&self, id: NodeId, reason: &str) -> Option<NodeRecord> {
        let mut nodes = self.lock();
        let entry = nodes.get_mut(&id)?;
        if entry.record.state != NodeState::Alive as i32 {
            return None;
        }
        entry.record.state = NodeState::Dead as i32;
        entry.record.died_at_unix_ms = unix_ms();
        entry.record.death_reason = reason.to_string();
        entry.record.available.clear();
        entry.record.pending.clear();
        if reason.starts_with("stopped") {
            info!(node = %id, reason, "node left the cluster");
        } else {
            warn!(node = %id, reason, "node declared dead");
        }
        Some(entry.record.clone())
    }

    /// Live nodes whose last heartbeat is older than `timeout`.
    pub fn overdue(&self, timeout: Duration) -> Vec<(NodeId, Duration)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.record.state == NodeState::Alive as i32)
            .map(|(id, e)| (*id, e.last_heartbeat.elapsed()))
            .filter(|(_, age)| *age > timeout)
            .collect()
    }

    /// Takes `request` off a node's available resources until its next
    /// heartbeat reports the raylet's own accounting.
    pub fn reserve(&self, id: NodeId, request: &photon_proto::ResourceSet) {
        if let Some(entry) = self.lock().get_mut(&id) {
            let mut available = photon_proto::ResourceSet::from_proto(&entry.record.available);
            if available.contains(request) {
                available.subtract(request);
                entry.record.available = available.to_proto();
            }
        }
    }

    /// Records that the head could not dial a node's advertised address.
    pub fn set_unreachable(&self, id: NodeId, reason: String) {
        if let Some(entry) = self.lock().get_mut(&id) {
            warn!(node = %id, %reason, "node's advertised address is unreachable");
            entry.record.unreachable = reason;
        }
    }

    /// The raylet address of a node.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.lock()
            .get(&id)
            .and_then(|e| e.record.info.as_ref().map(|info| info.address.clone()))
    }

    /// The raylet address of every live node.
    pub fn alive_addresses(&self) -> HashMap<NodeId, String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.record.state == NodeState::Alive as i32)
            .filter_map(|(id, e)| Some((*id, e.record.info.as_ref()?.address.clone())))
            .collect()
    }

    /// Every record, with heartbeat ages filled in, sorted by registration time.
    pub fn snapshot(&self) -> Vec<NodeRecord> {
        let mut records: Vec<NodeRecord> = self
            .lock()
            .values()
            .map(|e| NodeRecord {
                last_heartbeat_age_ms: e.last_heartbeat.elapsed().as_millis() as u64,
                ..e.record.clone()
            })
            .collect();
        records.sort_by_key(|r| r.registered_at_unix_ms);
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId) -> NodeInfo {
        NodeInfo {
            node_id: id.to_vec(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn dead_nodes_cannot_heartbeat_or_come_back() {
        let table = NodeTable::default();
        let id = NodeId::random();
        table.register(id, info(id)).unwrap();
        assert!(table.heartbeat(id, &Heartbeat::default()).is_ok());
        assert!(table.mark_dead(id, "missed heartbeats").is_some());
        assert!(table.mark_dead(id, "again").is_none(), "dies once");
        let err = table.heartbeat(id, &Heartbeat::default()).unwrap_err();
        assert!(err.contains("declared dead (missed heartbeats)"), "{err}");
        let err = table.register(id, info(id)).unwrap_err().to_string();
        assert!(err.contains("rejoins as a new node"), "{err}");
        let unknown = NodeId::random();
        assert!(
            table
                .heartbeat(unknown, &Heartbeat::default())
                .unwrap_err()
                .contains("not registered")
        );
    }

    #[test]
    fn overdue_lists_only_silent_live_nodes() {
        let table = NodeTable::default();
        let id = NodeId::random();
        table.register(id, info(id)).unwrap();
        assert!(table.overdue(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(table.overdue(Duration::from_millis(10)).len(), 1);
        table.mark_dead(id, "x");
        assert!(table.overdue(Duration::ZERO).is_empty());
    }
}
