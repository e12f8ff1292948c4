//! ID newtypes.
//!
//! Task and object IDs are deterministic so that re-running a task recreates the
//! same object IDs (lineage reconstruction, idempotent output):
//! `TaskId = JobId ‖ hash(parent TaskId, submission counter)` and
//! `ObjectId = TaskId ‖ return index`. Objects created by `put` set the top bit
//! of the index, so a put can never collide with a task return. Node and worker
//! IDs name processes, not computations, and are random.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use xxhash_rust::xxh3::xxh3_128;

/// Error parsing an ID from hex text or bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason} (expected {expected_bytes} bytes = {} hex characters)", expected_bytes * 2)]
pub struct InvalidId {
    /// Which ID type was being parsed.
    pub kind: &'static str,
    /// What was wrong with the input.
    pub reason: String,
    /// The ID's size in bytes.
    pub expected_bytes: usize,
}

/// A malformed id in a request is the caller's mistake.
impl From<InvalidId> for tonic::Status {
    fn from(err: InvalidId) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Size of this ID in bytes.
            pub const SIZE: usize = $len;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the raw bytes of a protobuf `bytes` field.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidId> {
                let array: [u8; $len] = bytes.try_into().map_err(|_| InvalidId {
                    kind: stringify!($name),
                    reason: format!("got {} bytes", bytes.len()),
                    expected_bytes: $len,
                })?;
                Ok(Self(array))
            }

            /// The raw bytes as a `Vec`, for protobuf `bytes` fields.
            pub fn to_vec(&self) -> Vec<u8> {
                self.0.to_vec()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(text: &str) -> Result<Self, InvalidId> {
                let bytes = hex::decode(text).map_err(|err| InvalidId {
                    kind: stringify!($name),
                    reason: format!("{text:?} is not hex: {err}"),
                    expected_bytes: $len,
                })?;
                Self::from_slice(&bytes)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

byte_id!(
    /// A job: one driver program and everything it submits.
    JobId,
    4
);
byte_id!(
    /// A task (or an owner's root task): `JobId ‖ owner tag ‖ 8 bytes of
    /// hash(parent, counter)`. The owner tag (big-endian `u32`) names the
    /// process that submitted it: 0 for the job's driver, else a worker's
    /// tag from the head, so what a dead owner made is found by prefix.
    TaskId,
    16
);
byte_id!(
    /// An actor: `JobId ‖ owner tag ‖ 8 bytes of hash(creating task, counter)`.
    ActorId,
    16
);
byte_id!(
    /// An object: `TaskId ‖ index` (big-endian `u32`; top bit set for `put`s).
    ObjectId,
    20
);
byte_id!(
    /// A node (one raylet). Random.
    NodeId,
    16
);
byte_id!(
    /// A worker process. Random.
    WorkerId,
    16
);
byte_id!(
    /// A placement group: bundles of resources reserved together. Random.
    PlacementGroupId,
    16
);

/// Top bit of an object index: set for objects made by `put`.
const PUT_INDEX_BIT: u32 = 1 << 31;

impl JobId {
    /// The job with the given sequence number (the head assigns them in order).
    pub const fn from_u32(value: u32) -> Self {
        Self(value.to_be_bytes())
    }

    /// The sequence number.
    pub const fn as_u32(&self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

/// `parent's job and owner tag ‖ first 8 bytes of xxh3-128(domain ‖ parent ‖ counter)`.
fn derive_16(parent: TaskId, domain: &[u8], counter: u64) -> [u8; 16] {
    let mut input = Vec::with_capacity(domain.len() + 16 + 8);
    input.extend_from_slice(domain);
    input.extend_from_slice(parent.as_bytes());
    input.extend_from_slice(&counter.to_be_bytes());
    let hash = xxh3_128(&input).to_be_bytes();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&parent.0[..8]);
    id[8..].copy_from_slice(&hash[..8]);
    id
}

/// The owner tag at bytes 4..8 of a task, actor or object id.
fn owner_tag_of(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]])
}

impl TaskId {
    /// The driver's root task: every task a driver submits descends from it.
    pub fn for_driver(job: JobId) -> Self {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(job.as_bytes());
        Self(id)
    }

    /// The root task of a worker process that owns work of its own
    /// (nested tasks, actors, puts), under the owner tag the head gave it:
    /// every id it makes descends from it and carries the tag.
    pub fn for_owner(job: JobId, owner_tag: u32) -> Self {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(job.as_bytes());
        id[4..8].copy_from_slice(&owner_tag.to_be_bytes());
        Self(id)
    }

    /// The `counter`-th task submitted by `parent` (deterministic; same
    /// job and owner tag).
    pub fn for_child(parent: TaskId, counter: u64) -> Self {
        Self(derive_16(parent, b"task", counter))
    }

    /// The job this task belongs to.
    pub fn job_id(&self) -> JobId {
        JobId([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The tag of the process that owns it (0: the job's driver).
    pub fn owner_tag(&self) -> u32 {
        owner_tag_of(&self.0)
    }
}

impl ActorId {
    /// The `counter`-th actor created by `creator` (deterministic).
    pub fn for_child(creator: TaskId, counter: u64) -> Self {
        Self(derive_16(creator, b"actor", counter))
    }

    /// The job this actor belongs to.
    pub fn job_id(&self) -> JobId {
        JobId([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The tag of the process that created it (0: the job's driver).
    pub fn owner_tag(&self) -> u32 {
        owner_tag_of(&self.0)
    }
}

impl ObjectId {
    /// Largest return index / put counter (the top bit is the put flag).
    pub const MAX_INDEX: u32 = PUT_INDEX_BIT - 1;

    fn compose(task: TaskId, index: u32) -> Self {
        let mut id = [0u8; 20];
        id[..16].copy_from_slice(task.as_bytes());
        id[16..].copy_from_slice(&index.to_be_bytes());
        Self(id)
    }

    /// The `index`-th return value of `task`.
    ///
    /// # Panics
    /// If `index > MAX_INDEX` (no task returns two billion values).
    pub fn for_return(task: TaskId, index: u32) -> Self {
        assert!(
            index <= Self::MAX_INDEX,
            "return index {index} out of range"
        );
        Self::compose(task, index)
    }

    /// The `counter`-th object `put` by `task`.
    ///
    /// # Panics
    /// If `counter > MAX_INDEX`.
    pub fn for_put(task: TaskId, counter: u32) -> Self {
        assert!(
            counter <= Self::MAX_INDEX,
            "put counter {counter} out of range"
        );
        Self::compose(task, counter | PUT_INDEX_BIT)
    }

    /// The task that produced (or put) this object.
    pub fn task_id(&self) -> TaskId {
        let mut task = [0u8; 16];
        task.copy_from_slice(&self.0[..16]);
        TaskId(task)
    }

    /// The job that owns this object.
    pub fn job_id(&self) -> JobId {
        self.task_id().job_id()
    }

    /// The tag of the process that owns it (0: the job's driver).
    pub fn owner_tag(&self) -> u32 {
        owner_tag_of(&self.0)
    }

    /// True when the process with `owner_tag` of `job` owns it; tag 0
    /// stands for the whole job.
    pub fn owned_by(&self, job: JobId, owner_tag: u32) -> bool {
        self.job_id() == job && (owner_tag == 0 || self.owner_tag() == owner_tag)
    }

    /// The return index or put counter.
    pub fn index(&self) -> u32 {
        u32::from_be_bytes([self.0[16], self.0[17], self.0[18], self.0[19]]) & !PUT_INDEX_BIT
    }

    /// True for objects made by `put`, which lineage cannot rebuild.
    pub fn is_put(&self) -> bool {
        self.0[16] & 0x80 != 0
    }
}

fn random_16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

impl NodeId {
    /// A fresh random node ID.
    pub fn random() -> Self {
        Self(random_16())
    }
}

impl PlacementGroupId {
    /// A fresh random placement group ID.
    pub fn random() -> Self {
        Self(random_16())
    }
}

impl WorkerId {
    /// A fresh random worker ID.
    pub fn random() -> Self {
        Self(random_16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn task_ids_are_deterministic_and_distinct() {
        let job = JobId::from_u32(7);
        let root = TaskId::for_driver(job);
        assert_eq!(TaskId::for_child(root, 1), TaskId::for_child(root, 1));
        assert_ne!(TaskId::for_child(root, 1), TaskId::for_child(root, 2));
        assert_eq!(TaskId::for_child(root, 3).job_id(), job);
        assert_ne!(
            ActorId::for_child(root, 1).as_bytes(),
            TaskId::for_child(root, 1).as_bytes()
        );
    }

    #[test]
    fn ids_carry_their_owner_tag_down_the_tree() {
        let job = JobId::from_u32(7);
        let driver = TaskId::for_driver(job);
        let owner = TaskId::for_owner(job, 0xABCD_0001);
        let nested = TaskId::for_child(TaskId::for_child(owner, 3), 4);
        assert_eq!((nested.job_id(), nested.owner_tag()), (job, 0xABCD_0001));
        assert_eq!(TaskId::for_child(driver, 3).owner_tag(), 0);
        assert_eq!(ActorId::for_child(nested, 1).owner_tag(), 0xABCD_0001);
        let object = ObjectId::for_put(nested, 1);
        assert_eq!(object.owner_tag(), 0xABCD_0001);
        assert!(object.owned_by(job, 0xABCD_0001));
        assert!(object.owned_by(job, 0), "tag 0 is the whole job");
        assert!(!object.owned_by(job, 0xABCD_0002));
        assert!(!object.owned_by(JobId::from_u32(8), 0xABCD_0001));
        assert_ne!(
            TaskId::for_child(owner, 3),
            TaskId::for_child(TaskId::for_owner(job, 2), 3)
        );
    }

    #[test]
    fn object_ids_carry_task_index_and_put_flag() {
        let task = TaskId::for_child(TaskId::for_driver(JobId::from_u32(1)), 9);
        let ret = ObjectId::for_return(task, 2);
        let put = ObjectId::for_put(task, 2);
        assert_ne!(ret, put);
        assert_eq!((ret.task_id(), ret.index(), ret.is_put()), (task, 2, false));
        assert_eq!((put.task_id(), put.index(), put.is_put()), (task, 2, true));
        assert_eq!(put.job_id(), JobId::from_u32(1));
    }

    #[test]
    fn bad_text_and_bytes_name_the_id_kind_and_length() {
        let err = "abc".parse::<ObjectId>().unwrap_err().to_string();
        assert!(err.contains("ObjectId") && err.contains("40 hex"), "{err}");
        let err = NodeId::from_slice(&[1, 2, 3]).unwrap_err().to_string();
        assert!(
            err.contains("NodeId") && err.contains("got 3 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_id_in_a_request_is_an_invalid_argument() {
        let status = tonic::Status::from(ActorId::from_slice(&[0; 3]).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("ActorId") && status.message().contains("got 3 bytes"));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(NodeId::random(), NodeId::random());
        assert_ne!(WorkerId::random(), WorkerId::random());
    }

    proptest! {
        #[test]
        fn hex_and_serde_round_trip(bytes in any::<[u8; 20]>()) {
            let id = ObjectId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
            prop_assert_eq!(ObjectId::from_slice(&id.to_vec()).unwrap(), id);
        }
    }
}
