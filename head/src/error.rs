//! The head's error type.

/// Result alias for the head.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the head.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The persistent store could not be opened, read or written.
    #[error("head store {path}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The HTTP endpoint (status page, metrics) cannot listen.
    #[error("head status page: {message}")]
    Http {
        /// What failed, and what to do.
        message: String,
    },
    /// The TLS material cannot serve (no certificate of this node).
    #[error("head TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("head server on {address}: {source}")]
    Serve {
        /// Where it listened.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
