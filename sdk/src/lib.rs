//! Photon's Rust SDK: what Ray's API is to Python, typed and async-capable.
//!
//! ```ignore
//! #[photon::remote]
//! fn square(x: u64) -> u64 { x * x }
//!
//! #[photon::main]
//! fn main() -> photon::Result<()> {
//!     let ctx = photon::init(photon::Config::default())?; // embedded local cluster
//!     let refs: Vec<_> = (0..100).map(|i| square::remote(&ctx, i)).collect();
//!     let total: u64 = ctx.get_all(&refs)?.into_iter().sum();
//!     println!("{total}");
//!     Ok(())
//! }
//! ```
//!
//! - [`init`] connects to a cluster (`Config::address`, `PHOTON_ADDRESS`) or
//!   starts an embedded single-node one (head and raylet in this process,
//!   workers as child processes of this same program).
//! - `#[photon::remote]` functions run as tasks on leased workers; arguments
//!   are values or [`ObjectRef`]s; results come back as [`ObjectRef`]s.
//! - `#[photon::actor]` on an `impl` block gives a `TypeHandle` whose methods
//!   run in the actor's own worker process, in call order.
//! - [`Context::put`], [`Context::get`], [`Context::get_all`], [`Context::wait`];
//!   values up to 100 KiB travel inline, larger ones through the node's
//!   shared-memory object store.
//! - Arrow `RecordBatch` values ([`Context::put_batch`], `RecordBatch`
//!   arguments and results of remote functions and actor methods) travel as
//!   Arrow IPC and are read back zero-copy from shared memory
//!   ([`Context::get_batch`]).
//! - Tasks are retried when their worker or node dies; lost objects are
//!   rebuilt from lineage (kept by the head); errors are typed ([`Error`]).
//!
//! Workers are this same binary: `main` must begin with
//! [`worker_entry`] (which `#[photon::main]` inserts), so a process started
//! as a worker runs the worker loop instead of the program.

mod actor_client;
mod batch;
mod blocked;
mod borrows;
mod cancel;
mod clients;
mod cluster;
mod codec;
mod config;
mod connection;
mod context;
mod error;
pub mod home;
mod lineage;
mod object_io;
mod object_ref;
mod objects;
mod options;
pub mod packages;
mod placement_group;
mod progress;
mod ref_wire;
mod registry;
mod returns;
mod submitter;
pub mod testing;
mod worker;
mod worker_context;

pub use actor_client::ActorHandle;
pub use cancel::is_cancelled;
pub use config::{ADDRESS_ENV, Config, TOKEN_ENV};
pub use connection::ConnectionFile;
pub use context::{
    Context, JOB_MEMORY_TIMEOUT, JobMemory, NodeView, ObjectHolders, PendingDemand, init,
};
pub use error::{Error, KillReason, Result};
pub use object_io::{INLINE_MAX, ObjectBytes};
pub use object_ref::{IntoArg, ObjectRef, TaskArg};
pub use options::{ActorOptions, MethodOptions, TaskOptions};
pub use photon_macros::{actor, main, method, remote};
pub use photon_proto::{ActorId, ObjectId};
pub use placement_group::{Bundle, PlacementGroup, PlacementGroupState, PlacementStrategy};
pub use progress::{CallProgress, TaskProgress};
pub use returns::{CallReturns, MAX_RETURNS};
pub use worker::{where_this_runs, worker_entry};

/// Arrow, as the SDK uses it (record batches travel as Arrow IPC).
pub use arrow;

/// Threads for a driver's, a worker's or a local pipeline's async runtime:
/// the cores this process may use (its CPU affinity and cgroup quota, as
/// the standard library reads them), at least 2 (a blocking section hands
/// its queue to the other thread) and at most 16 (the runtimes move bytes
/// and messages; the work runs on blocking threads).
pub fn runtime_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 16)
}

/// Runs a long synchronous piece of work (a model's forward pass) inside an
/// `async` remote function or actor method; synchronous ones are run so
/// already. On a multi-threaded runtime the thread first hands its queued
/// tasks to another thread: tokio keeps a just-woken task (the reply stream
/// that the previous call's result woke) in a slot of this thread that no
/// other thread takes, so without this each reply waits for the next call
/// to finish.
pub fn run_blocking<T>(body: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(body)
        }
        _ => body(),
    }
}

/// What the macros' generated code uses. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use futures;
    pub use inventory;
    pub use serde;
    pub use tokio::sync::RwLock;

    pub use crate::actor_client::check_actor_class;

    pub use crate::registry::{
        ActorClass, ActorInstance, Args, BoxFuture, RemoteFunction, check_arity, decode,
        decode_batch, encode, encode_batch,
    };
    pub use crate::returns::encode_returns;
    pub use crate::run_blocking;
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtimes_get_the_usable_cores_within_bounds() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(super::runtime_threads(), cores.clamp(2, 16));
    }
}
