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
//! ```
//! use photon_object_store::{ObjectStore, StoreConfig};
//! use photon_proto::{JobId, ObjectId, TaskId};
//!
//! let store = ObjectStore::open(StoreConfig::with_capacity(1 << 20))?;
//! let id = ObjectId::for_put(TaskId::for_driver(JobId::from_u32(1)), 1);
//! let mut writer = store.create(id, 5)?;
//! writer.copy_from_slice(b"hello");
//! writer.seal()?;
//! let view = store.get(id)?; // zero-copy and pinned until dropped
//! assert_eq!(&view[..], b"hello");
//! drop(view);
//! store.delete(id)?;
//! assert_eq!(store.stats().used, 0);
//! # Ok::<(), photon_object_store::Error>(())
//! ```
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
