//! The object store's error type.

use photon_proto::ObjectId;

/// Result alias for the object store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the object store. Each message names the
/// object and the sizes involved, and says what to do where there is a choice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `create` of an ID that is already in the store.
    #[error("object {id} already exists in the store ({size} bytes); object ids are created once")]
    AlreadyExists {
        /// The object.
        id: ObjectId,
        /// Size of the existing object.
        size: u64,
    },
    /// The object is not in the store (never created, deleted or evicted).
    #[error("object {id} is not in the object store")]
    NotFound {
        /// The object.
        id: ObjectId,
    },
    /// `seal` of an object that is already sealed.
    #[error("object {id} is already sealed ({size} bytes); sealed objects are immutable")]
    AlreadySealed {
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
    /// An operation that needs a sealed object found it still being written.
    #[error("object {id} is not sealed yet ({size} bytes being written); {hint}")]
    NotSealed {
        /// The object.
        id: ObjectId,
        /// Its size.
        size: u64,
        /// What the caller should do instead.
        hint: &'static str,
    },
    /// `create` with size 0.
    #[error("object {id} has size 0; objects must hold at least one byte")]
    ZeroSize {
        /// The object.
        id: ObjectId,
    },
    /// `create` of an object larger than the whole store.
    #[error(
        "object {id} is {size} bytes, larger than the object store's capacity of {capacity} bytes; \
         raise the store capacity or split the object"
    )]
    TooLarge {
        /// The object.
        id: ObjectId,
        /// Requested size.
        size: u64,
        /// Store capacity.
        capacity: u64,
    },
    /// Nothing could be evicted or spilled to make room.
    #[error(
        "object store is full: cannot allocate {size} bytes for object {id}; capacity {capacity} bytes, \
         {used} used, {pinned} of them pinned by open views or unsealed writers (never evicted); \
         release views you no longer need or raise the store capacity"
    )]
    OutOfMemory {
        /// The object that did not fit.
        id: ObjectId,
        /// Requested size.
        size: u64,
        /// Store capacity.
        capacity: u64,
        /// Bytes allocated now.
        used: u64,
        /// Bytes that cannot be evicted or spilled (pinned or unsealed).
        pinned: u64,
    },
    /// A filesystem or mapping operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing an object to, or reading it from, the spill location failed.
    #[error("spilling object {id} to {location} failed: {message}")]
    Spill {
        /// The object.
        id: ObjectId,
        /// The spill URL or file.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The configuration cannot work on this machine.
    #[error("invalid object store configuration: {0}")]
    Config(String),
    /// A descriptor handed to another process does not fit the segment it names.
    #[error("invalid object descriptor for {id}: {reason}")]
    InvalidDescriptor {
        /// The object.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with what the store was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
