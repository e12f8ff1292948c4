//! Photon's wire protocol.
//!
//! This crate owns every `.proto` file (under `proto/`), the tonic/prost code
//! generated from them, the ID newtypes and [`PROTOCOL_VERSION`]. It holds no
//! behaviour beyond conversions: services are implemented by the crates that
//! own them (head, raylet, SDK). Resource quantities live here too, because
//! they are part of the wire format and every layer does arithmetic on them.
//!
//! ```
//! use photon_proto::{JobId, ObjectId, TaskId};
//!
//! let task = TaskId::for_child(TaskId::for_driver(JobId::from_u32(3)), 1);
//! let object = ObjectId::for_return(task, 0);
//! assert_eq!(object.task_id(), task); // re-running the task recreates this id
//! assert_eq!(object.to_string().parse::<ObjectId>().unwrap(), object);
//! ```

pub mod auth;
pub mod files;
mod ids;
pub mod net;
pub mod placement;
mod process;
mod resources;
pub mod tls;
mod version;
mod version_service;

pub use ids::{ActorId, InvalidId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
pub use process::process_started;
pub use resources::{InvalidQuantity, Quantity, ResourceSet, UNITS_PER_WHOLE, names};
pub use version::{PROTOCOL_VERSION, VersionMismatch, check_protocol_version};
pub use version_service::VersionService;

/// Generated protobuf messages and gRPC stubs for `photon.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("photon.v1");
}
