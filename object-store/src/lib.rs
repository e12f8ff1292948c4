//! Photon's per-node shared-memory object store.
//!
//! The store owns one memory-mapped segment file (in `/dev/shm` when it has
//! room, else a disk directory), a best-fit allocator over it, and the
//! lifecycle of every object in it: `create` → write → `seal` → `get` (pinned,
//! zero-copy) → release → `delete`. Under memory pressure it evicts unpinned
//! secondary copies, then spills unpinned primary copies through the
//! `object_store` crate and restores them on `get`. Other processes on the node
//! read objects zero-copy through an [`ObjectDescriptor`].
//!
//! It does not know about tasks, nodes or the network: the raylet decides
//! what is primary, who may read, and when to delete.
#![allow(unsafe_code)] // mapping shared memory; every block carries a SAFETY comment

mod allocator;
mod config;
mod descriptor;
mod error;
mod handles;
mod segment;
mod spill;
mod store;

pub use allocator::ALIGNMENT;
pub use config::{DEFAULT_CAPACITY_FRACTION, StoreConfig, default_capacity, physical_memory};
pub use descriptor::{MappedObject, MappedObjectMut, ObjectDescriptor};
pub use error::{Error, Result};
pub use handles::{ObjectView, ObjectWriter};
pub use store::{CopyKind, ObjectStore, StoreStats};
