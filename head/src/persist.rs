//! The head's tables on disk: an embedded transactional store (redb) under the
//! session directory, so a `kill -9` of the head loses nothing registered.
//! Every write is one committed transaction; calls block, so async callers use
//! `spawn_blocking`.

// redb::Error is large, but these calls are rare and already block on disk I/O.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use photon_proto::v1::{ActorRecord, JobRecord, LineageRecord, NodeRecord, PlacementGroupRecord};
use photon_proto::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId};
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

use crate::error::{Error, Result};

/// A table of protobuf records keyed by an id's bytes.
type Records = TableDefinition<'static, &'static [u8], &'static [u8]>;

const NODES: Records = TableDefinition::new("nodes");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ACTORS: Records = TableDefinition::new("actors");
const LINEAGE: Records = TableDefinition::new("lineage");
const JOBS: Records = TableDefinition::new("jobs");
/// Jobs with a driver attached: a restarted head ends those whose driver
/// does not come back.
const DRIVERS: Records = TableDefinition::new("drivers");
const PLACEMENT_GROUPS: Records = TableDefinition::new("placement_groups");

/// Handle to the head's database. Cheap to clone.
#[derive(Clone)]
pub struct Persistence {
    db: Arc<Database>,
    path: PathBuf,
}

impl Persistence {
    /// Opens (or creates) `dir/head.redb` and its tables.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("head.redb");
        let error = |message: String| Error::Store {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|err| error(format!("cannot create {}: {err}", dir.display())))?;
        let db = Database::create(&path).map_err(|err| error(err.to_string()))?;
        let persistence = Self {
            db: Arc::new(db),
            path: path.clone(),
        };
        persistence.write(|txn| {
            txn.open_table(NODES)?;
            txn.open_table(KV)?;
            txn.open_table(META)?;
            txn.open_table(ACTORS)?;
            txn.open_table(LINEAGE)?;
            txn.open_table(JOBS)?;
            txn.open_table(DRIVERS)?;
            txn.open_table(PLACEMENT_GROUPS)?;
            Ok(())
        })?;
        Ok(persistence)
    }

    fn error(&self, err: impl std::fmt::Display) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            message: err.to_string(),
        }
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        let value = body(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))?;
        Ok(value)
    }

    fn read<T>(
        &self,
        body: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        body(&txn).map_err(|e| self.error(e))
    }

    /// The cluster's id, created on first start and kept across restarts.
    pub fn cluster_id(&self) -> Result<String> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            if let Some(id) = meta.get("cluster_id")? {
                return Ok(id.value().to_string());
            }
            let id = photon_proto::auth::generate_token();
            meta.insert("cluster_id", id.as_str())?;
            Ok(id)
        })
    }

    /// Writes one protobuf record under `key`.
    fn save_record(&self, table: Records, key: &[u8], record: &impl Message) -> Result<()> {
        let bytes = record.encode_to_vec();
        self.write(|txn| {
            txn.open_table(table)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Every protobuf record of `table`; `what` names them in errors.
    fn load_records<M: Message + Default>(&self, table: Records, what: &str) -> Result<Vec<M>> {
        let rows: Vec<Vec<u8>> = self.read(|txn| {
            let table = txn.open_table(table)?;
            let mut rows = Vec::new();
            for row in table.iter()? {
                rows.push(row?.1.value().to_vec());
            }
            Ok(rows)
        })?;
        rows.iter()
            .map(|bytes| {
                M::decode(bytes.as_slice())
                    .map_err(|e| self.error(format!("corrupt {what} record: {e}")))
            })
            .collect()
    }

    /// Writes one node record.
    pub fn save_node(&self, node_id: NodeId, record: &NodeRecord) -> Result<()> {
        self.save_record(NODES, node_id.as_bytes(), record)
    }

    /// Every node record.
    pub fn load_nodes(&self) -> Result<Vec<NodeRecord>> {
        self.load_records(NODES, "node")
    }

    /// Writes one actor record.
    pub fn save_actor(&self, actor_id: ActorId, record: &ActorRecord) -> Result<()> {
        self.save_record(ACTORS, actor_id.as_bytes(), record)
    }

    /// Every actor record.
    pub fn load_actors(&self) -> Result<Vec<ActorRecord>> {
        self.load_records(ACTORS, "actor")
    }

    /// Writes one placement group record.
    pub fn save_placement_group(
        &self,
        id: PlacementGroupId,
        record: &PlacementGroupRecord,
    ) -> Result<()> {
        self.save_record(PLACEMENT_GROUPS, id.as_bytes(), record)
    }

    /// Every placement group record.
    pub fn load_placement_groups(&self) -> Result<Vec<PlacementGroupRecord>> {
        self.load_records(PLACEMENT_GROUPS, "placement group")
    }

    /// Writes one job record.
    pub fn save_job(&self, record: &JobRecord) -> Result<()> {
        self.save_record(JOBS, record.job_id.as_bytes(), record)
    }

    /// Deletes job `id`'s record.
    pub fn delete_job(&self, id: &str) -> Result<()> {
        self.write(|txn| {
            txn.open_table(JOBS)?.remove(id.as_bytes())?;
            Ok(())
        })
    }

    /// Records that job `job` has a driver attached.
    pub fn save_driver(&self, job: JobId) -> Result<()> {
        self.write(|txn| {
            txn.open_table(DRIVERS)?
                .insert(&job.as_bytes()[..], &[][..])?;
            Ok(())
        })
    }

    /// Forgets job `job`'s drivers (the job was ended).
    pub fn delete_driver(&self, job: JobId) -> Result<()> {
        self.write(|txn| {
            txn.open_table(DRIVERS)?.remove(&job.as_bytes()[..])?;
            Ok(())
        })
    }

    /// The jobs that had a driver attached when the head last ran.
    pub fn load_drivers(&self) -> Result<Vec<JobId>> {
        let keys: Vec<Vec<u8>> = self.read(|txn| {
            let table = txn.open_table(DRIVERS)?;
            let mut keys = Vec::new();
            for row in table.iter()? {
                keys.push(row?.0.value().to_vec());
            }
            Ok(keys)
        })?;
        Ok(keys
            .iter()
            .filter_map(|key| JobId::from_slice(key).ok())
            .collect())
    }

    /// Every job record.
    pub fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        self.load_records(JOBS, "job")
    }

    /// Adds and removes lineage records in one transaction.
    pub fn update_lineage(&self, add: &[LineageRecord], remove: &[ObjectId]) -> Result<()> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = add
            .iter()
            .map(|record| (record.object_id.clone(), record.encode_to_vec()))
            .collect();
        self.write(|txn| {
            let mut table = txn.open_table(LINEAGE)?;
            for (key, bytes) in &encoded {
                table.insert(key.as_slice(), bytes.as_slice())?;
            }
            for id in remove {
                table.remove(&id.as_bytes()[..])?;
            }
            Ok(())
        })
    }

    /// Every lineage record.
    pub fn load_lineage(&self) -> Result<Vec<LineageRecord>> {
        self.load_records(LINEAGE, "lineage")
    }

    /// Stores `value` under `namespace`/`key`; returns false if it existed and
    /// `overwrite` is off.
    pub fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        overwrite: bool,
    ) -> Result<bool> {
        let full_key = kv_key(namespace, key);
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            if !overwrite && table.get(full_key.as_str())?.is_some() {
                return Ok(false);
            }
            table.insert(full_key.as_str(), value)?;
            Ok(true)
        })
    }

    /// The value under `namespace`/`key`.
    pub fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let full_key = kv_key(namespace, key);
        self.read(|txn| {
            Ok(txn
                .open_table(KV)?
                .get(full_key.as_str())?
                .map(|v| v.value().to_vec()))
        })
    }
}

/// Namespaces cannot contain NUL, so `ns\0key` never collides.
fn kv_key(namespace: &str, key: &str) -> String {
    format!("{namespace}\0{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId::random();
        let cluster_id = {
            let db = Persistence::open(dir.path()).unwrap();
            let record = NodeRecord {
                death_reason: "test".into(),
                ..Default::default()
            };
            db.save_node(node, &record).unwrap();
            assert!(db.kv_put("ns", "k", b"v1", false).unwrap());
            assert!(!db.kv_put("ns", "k", b"v2", false).unwrap(), "no overwrite");
            db.cluster_id().unwrap()
        };
        let db = Persistence::open(dir.path()).unwrap();
        assert_eq!(db.cluster_id().unwrap(), cluster_id);
        assert_eq!(db.load_nodes().unwrap()[0].death_reason, "test");
        assert_eq!(db.kv_get("ns", "k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(db.kv_get("other", "k").unwrap(), None);
    }
}
