//! Helpers shared by the object store's integration tests.
#![allow(dead_code)]

use photon_object_store::{ObjectStore, StoreConfig};
use photon_proto::{JobId, ObjectId, TaskId};

/// A store of `capacity` bytes in /dev/shm (or the temp dir), spilling into `dir`.
pub fn store(capacity: u64, dir: &tempfile::TempDir) -> ObjectStore {
    ObjectStore::open(StoreConfig {
        capacity,
        fallback_root: dir.path().to_path_buf(),
        ..StoreConfig::default()
    })
    .expect("store opens")
}

/// The `n`-th object id of a test task.
pub fn oid(n: u32) -> ObjectId {
    ObjectId::for_return(
        TaskId::for_child(TaskId::for_driver(JobId::from_u32(1)), 1),
        n,
    )
}

/// Deterministic content for object `n`.
pub fn pattern(n: u32, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(n.wrapping_mul(7919)) as u8
        })
        .collect()
}

/// A cheap order-sensitive checksum of every byte.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
