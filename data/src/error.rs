//! What can go wrong in a pipeline, each saying what to do about it.

/// A pipeline error. Messages name the file, column, block or URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input or the pipeline is wrong (missing file or column, wrong
    /// type, corrupt or empty input, non-empty destination). Found before
    /// any work ran; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A user function failed on a block (and no more blocks may be skipped).
    #[error("{0}")]
    Udf(String),
    /// Reading or writing storage failed.
    #[error("{0}")]
    Io(String),
    /// A block failed for a cluster reason more often than retries allow.
    #[error("{0}")]
    Cluster(String),
    /// From the SDK.
    #[error(transparent)]
    Photon(#[from] photon::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
