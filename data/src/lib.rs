//! photon-data: streaming batch pipelines on a Photon cluster, what Ray Data
//! is to Ray.
//!
//! ```ignore
//! struct Double;
//! impl photon_data::BatchUdf for Double {
//!     type Args = ();
//!     fn new(_: ()) -> Result<Self, String> { Ok(Double) }
//!     fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> { … }
//! }
//! photon_data::register_udf!(Double);
//!
//! let summary = photon_data::read_parquet(&ctx, ["data/*.parquet"])
//!     .select_columns(&["id", "text"])
//!     .map_batches::<Double>((), MapOptions::new().batch_size(256).actors(1..=3))
//!     .write_parquet("out/", false)?;
//! ```
//!
//! - **Sources** ([`read_parquet`], [`range`], [`from_batches`]) are cut into
//!   blocks (row groups, 64 MiB by default; small inputs split so every
//!   worker gets work). Every Parquet footer is read and checked before any
//!   task starts: a missing column, a wrong type, a corrupt or empty input is
//!   one clear error naming the file and column, and nothing is written.
//! - **Stages** fuse operators: the read with what follows it up to the first
//!   actor pool, each pool with what follows it. Blocks travel between stages
//!   through the object store as Arrow IPC and are read zero-copy; functions
//!   see zero-copy slices of `batch_size` rows.
//! - **The executor** streams: a memory budget bounds the blocks in flight,
//!   pools grow and shrink between `min` and `max` and never take the CPUs
//!   the read stage needs, and a block whose actor, worker or node died runs
//!   again from its source rows.
//! - **In this process** ([`Local`] in place of a [`photon::Context`]): the
//!   same plan, stage functions and sink without a cluster; the read runs a
//!   few blocks ahead of the later stages, and each actor stage's functions
//!   are constructed once.
//! - **`write_parquet`** is exactly-once: deterministic part names, atomic
//!   puts, a `_SUCCESS` manifest last, nothing left behind by a failed run.

mod block_progress;
mod dataset;
mod error;
mod executor;
mod filter;
mod local;
pub mod location;
mod part;
mod pool;
mod progress;
mod sink;
pub mod source;
mod stats;
mod steps;
mod streaming;
mod udf;
mod writer_lock;

pub use block_progress::BlockProgress;
pub use dataset::{
    DEFAULT_BLOCK_BYTES, Dataset, MapOptions, Runner, WriteOptions, from_batches, range,
    read_parquet,
};
pub use error::{Error, Result};
pub use filter::{Column, Comparison, Predicate, Value, col};
pub use local::Local;
pub use progress::{INTERVAL_ENV as PROGRESS_INTERVAL_ENV, ProgressMode, RowsProgress};
pub use sink::{MANIFEST, Part, WriteSummary, files_to_replace};
pub use stats::{StageStats, Stats};
pub use udf::BatchUdf;
pub use writer_lock::LOCK as WRITER_LOCK;

/// What [`register_udf!`] expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    pub use crate::udf::UdfEntry;
}
