//! The lineage graph: for every live object a task produced, the task spec
//! that produced it. Owners add records batched as they submit tasks and
//! remove them when the objects (and every object whose lineage needs them)
//! are freed. Persisted, so an object can be rebuilt after the head restarts.

use std::collections::HashMap;
use std::sync::Mutex;

use photon_proto::v1::LineageRecord;
use photon_proto::{JobId, ObjectId};

/// The in-memory table; `Persistence` holds the durable copy.
#[derive(Default)]
pub struct LineageTable(Mutex<HashMap<ObjectId, LineageRecord>>);

impl LineageTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, LineageRecord>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads records read from disk.
    pub fn restore(&self, records: Vec<LineageRecord>) {
        let mut table = self.lock();
        for record in records {
            if let Ok(id) = ObjectId::from_slice(&record.object_id) {
                table.insert(id, record);
            }
        }
    }

    /// Applies one batch; returns how many records remain.
    pub fn update(&self, add: &[LineageRecord], remove: &[ObjectId]) -> usize {
        let mut table = self.lock();
        for record in add {
            if let Ok(id) = ObjectId::from_slice(&record.object_id) {
                table.insert(id, record.clone());
            }
        }
        for id in remove {
            table.remove(id);
        }
        table.len()
    }

    /// Removes the records of the objects of job `job` (`owner_tag` 0), or of
    /// its owner `owner_tag` (it ended); returns their objects.
    pub fn remove_owned(&self, job: JobId, owner_tag: u32) -> Vec<ObjectId> {
        let mut table = self.lock();
        let ids: Vec<ObjectId> = table
            .keys()
            .filter(|id| id.owned_by(job, owner_tag))
            .copied()
            .collect();
        for id in &ids {
            table.remove(id);
        }
        ids
    }

    /// How many records the table holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The record of `object`.
    pub fn get(&self, object: ObjectId) -> Option<LineageRecord> {
        self.lock().get(&object).cloned()
    }
}
