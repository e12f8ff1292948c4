//! What can go wrong, typed: a caller can tell an application error in a
//! remote function from a dead worker, a dead node, a lost object or a
//! request no node can ever run.

use photon_proto::{ActorId, ObjectId};

/// Why a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// The raylet's memory monitor killed it (over its limit, or the node ran out).
    Oom(String),
    /// A signal ended it.
    Signal(String),
    /// It exited by itself (e.g. `std::process::exit` in user code).
    Exit(String),
}

impl std::fmt::Display for KillReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Oom(why) | Self::Signal(why) | Self::Exit(why) => f.write_str(why),
        }
    }
}

/// Photon's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The remote function (or actor method) returned an error or panicked.
    #[error("task {function} failed on {node} (pid {pid}): {message}")]
    TaskFailed {
        /// The function or `Class::method`.
        function: String,
        /// The error's message, or the panic payload.
        message: String,
        /// True when it panicked.
        panicked: bool,
        /// The raylet address of the node it ran on.
        node: String,
        /// The worker's process id.
        pid: u32,
    },
    /// The actor is dead (killed, out of restarts, or its constructor failed),
    /// or its worker died while running this call.
    #[error("actor {actor} died: {reason}")]
    ActorDied {
        /// The actor.
        actor: ActorId,
        /// Why, in words.
        reason: String,
    },
    /// Every copy of an object is gone and it cannot be rebuilt.
    #[error("object {object} is lost: {cause}")]
    ObjectLost {
        /// The object.
        object: ObjectId,
        /// Why it cannot be rebuilt.
        cause: String,
    },
    /// A borrowed object (one passed inside a value) is gone because the
    /// process that owns it ended: an object's fate follows its owner's.
    #[error("object {object} is lost: its owner, {owner}, ended ({reason})")]
    OwnerDied {
        /// The object.
        object: ObjectId,
        /// Which process owned it.
        owner: String,
        /// How it ended.
        reason: String,
    },
    /// The node running the task died, and the task ran out of retries.
    #[error("node {node} died while running {function}: {reason}")]
    NodeDied {
        /// The node's raylet address.
        node: String,
        /// The function.
        function: String,
        /// What was seen.
        reason: String,
    },
    /// The worker running the task was killed, and the task ran out of retries.
    #[error("the worker running {function} was killed: {reason}")]
    WorkerKilled {
        /// The function.
        function: String,
        /// Why.
        reason: KillReason,
    },
    /// The task (or actor call) was cancelled by its owner
    /// ([`Context::cancel`](crate::Context::cancel)) before it finished.
    #[error("task {function} making {object} was cancelled{how}")]
    TaskCancelled {
        /// The function or `Class::method`.
        function: String,
        /// The object it would have made.
        object: photon_proto::ObjectId,
        /// How: empty, or " (its worker was killed)" after a forced cancel.
        how: String,
    },
    /// `wait` or `get` with a timeout ran out.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// No node of the cluster could ever run this request.
    #[error("cannot schedule {what}: {why}")]
    Unschedulable {
        /// The function or actor.
        what: String,
        /// Why no node fits.
        why: String,
    },
    /// A value could not be serialized or deserialized.
    #[error("{0}")]
    Serialization(String),
    /// Bad configuration or arguments.
    #[error("{0}")]
    Config(String),
    /// The cluster (head, raylet or worker) could not be reached or refused a call.
    #[error("{0}")]
    Cluster(String),
}

impl Error {
    pub(crate) fn cluster(what: impl std::fmt::Display, status: &tonic::Status) -> Self {
        Self::Cluster(format!("{what}: {}", status.message()))
    }
}

/// Photon's result.
pub type Result<T> = std::result::Result<T, Error>;
