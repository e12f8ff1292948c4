//! The raylet's error type.

use std::time::Duration;

/// Result alias for the raylet.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops a raylet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration (flags).
    #[error("invalid raylet configuration: {0}")]
    Config(String),
    /// The node's resources are misconfigured.
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    /// The object store could not be created.
    #[error("cannot create the node's object store: {0}")]
    Store(#[from] photon_object_store::Error),
    /// The head refused this node (version mismatch, wrong token).
    #[error("the head at {head} refused this node: {message}")]
    Refused {
        /// The head's address.
        head: String,
        /// The head's reason.
        message: String,
    },
    /// The head declared this node dead (it was silent past the timeout):
    /// [`crate::run`] rejoins as a new node.
    #[error("the head at {head} declared this node dead: {message}")]
    DeclaredDead {
        /// The head's address.
        head: String,
        /// The head's reason.
        message: String,
    },
    /// The head did not answer at start.
    #[error(
        "cannot reach the head at {head} (tried for {waited:.1?}): {message}; is `photon start --head` running there?"
    )]
    HeadUnreachable {
        /// The head's address.
        head: String,
        /// How long the raylet tried.
        waited: Duration,
        /// The last error.
        message: String,
    },
    /// The raylet's own server failed.
    #[error("raylet server on {address}: {source}")]
    Serve {
        /// Where it listened.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Stopped before registration finished.
    #[error("stopped before the raylet registered")]
    Stopped,
}
