//! The object directory: which nodes hold a copy of each object. Soft state,
//! kept in memory: raylets report their objects when they (re-)register, and a
//! dead node's locations are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_proto::{JobId, NodeId, ObjectId};

#[derive(Default)]
struct Maps {
    holders: HashMap<ObjectId, HashSet<NodeId>>,
    held_by: HashMap<NodeId, HashSet<ObjectId>>,
}

/// Object → nodes holding it.
#[derive(Default)]
pub struct ObjectDirectory {
    maps: Mutex<Maps>,
}

impl ObjectDirectory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `node` holds `object`.
    pub fn add(&self, object: ObjectId, node: NodeId) {
        let mut maps = self.lock();
        maps.holders.entry(object).or_default().insert(node);
        maps.held_by.entry(node).or_default().insert(object);
    }

    /// Records that `node` dropped `object`.
    pub fn remove(&self, object: ObjectId, node: NodeId) {
        let mut maps = self.lock();
        if let Some(nodes) = maps.holders.get_mut(&object) {
            nodes.remove(&node);
            if nodes.is_empty() {
                maps.holders.remove(&object);
            }
        }
        if let Some(objects) = maps.held_by.get_mut(&node) {
            objects.remove(&object);
        }
    }

    /// Replaces everything known about `node` with what it reports.
    pub fn reset_node(&self, node: NodeId, objects: impl IntoIterator<Item = ObjectId>) {
        self.drop_node(node);
        for object in objects {
            self.add(object, node);
        }
    }

    /// Forgets every copy `node` held (it died).
    pub fn drop_node(&self, node: NodeId) -> usize {
        let mut maps = self.lock();
        let objects = maps.held_by.remove(&node).unwrap_or_default();
        for object in &objects {
            if let Some(nodes) = maps.holders.get_mut(object) {
                nodes.remove(&node);
                if nodes.is_empty() {
                    maps.holders.remove(object);
                }
            }
        }
        objects.len()
    }

    /// Forgets every copy of the objects of job `job` (`owner_tag` 0), or of
    /// its owner `owner_tag` (the job or owner ended and its objects were
    /// freed everywhere).
    pub fn drop_owned(&self, job: JobId, owner_tag: u32, keep: &HashSet<ObjectId>) {
        let gone = |id: &ObjectId| id.owned_by(job, owner_tag) && !keep.contains(id);
        let mut maps = self.lock();
        maps.holders.retain(|id, _| !gone(id));
        for objects in maps.held_by.values_mut() {
            objects.retain(|id| !gone(id));
        }
    }

    /// Nodes holding `object`.
    pub fn holders(&self, object: ObjectId) -> Vec<NodeId> {
        self.lock()
            .holders
            .get(&object)
            .map(|nodes| nodes.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use photon_proto::TaskId;

    #[test]
    fn a_dead_nodes_copies_disappear() {
        let directory = ObjectDirectory::default();
        let object = ObjectId::for_put(TaskId::for_driver(JobId::from_u32(1)), 1);
        let (a, b) = (NodeId::random(), NodeId::random());
        directory.add(object, a);
        directory.add(object, b);
        assert_eq!(directory.holders(object).len(), 2);
        assert_eq!(directory.drop_node(a), 1);
        assert_eq!(directory.holders(object), vec![b]);
        directory.remove(object, b);
        assert!(directory.holders(object).is_empty());
        directory.reset_node(a, [object]);
        assert_eq!(directory.holders(object), vec![a]);
    }
}
