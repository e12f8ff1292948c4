//! Moving values in and out of a node's shared-memory store from a client
//! process (driver or worker): the raylet hands out descriptors, the client
//! maps the pages itself, so a large value is copied once (into the store)
//! and read in place.

use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use photon_object_store::{MappedObject, MappedObjectMut, ObjectDescriptor};
use photon_proto::ObjectId;
use photon_proto::v1::{
    ClientProcess, CreateObjectRequest, GetObjectRequest, ReleaseObjectRequest, SealObjectRequest,
};
use tonic::Code;

use crate::clients::RayletClient;
use crate::error::{Error, Result};

/// Values up to this size travel inline (in task replies and specs); larger
/// ones go through the object store.
pub const INLINE_MAX: usize = 100 << 10;

/// Bytes of an object: inline, or mapped from the store (pinned until dropped).
pub enum ObjectBytes {
    /// Held in memory.
    Inline(Bytes),
    /// A read-only mapping of the store's pages.
    Mapped(Arc<MappedRead>),
}

impl ObjectBytes {
    /// The same bytes as a `bytes::Bytes`, without copying: a mapping stays
    /// pinned for as long as the returned value (or any slice of it) lives.
    pub fn share(&self) -> Bytes {
        match self {
            Self::Inline(bytes) => bytes.clone(),
            Self::Mapped(mapped) => Bytes::from_owner(SharedMapping(mapped.clone())),
        }
    }
}

/// A mapping shared with `Bytes` (which needs an owner it can hold).
struct SharedMapping(Arc<MappedRead>);

impl AsRef<[u8]> for SharedMapping {
    fn as_ref(&self) -> &[u8] {
        &self.0.mapping
    }
}

impl Deref for ObjectBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline(bytes) => bytes,
            Self::Mapped(mapped) => &mapped.mapping,
        }
    }
}

/// A mapping whose pin is released (asynchronously) when dropped.
pub struct MappedRead {
    mapping: MappedObject,
    raylet: RayletClient,
    id: ObjectId,
    /// Where the release runs: the value may be dropped on any thread.
    runtime: tokio::runtime::Handle,
}

impl Drop for MappedRead {
    fn drop(&mut self) {
        let mut raylet = self.raylet.clone();
        let id = self.id;
        self.runtime.spawn(async move {
            let _ = raylet
                .release_object(ReleaseObjectRequest {
                    object_id: id.to_vec(),
                    reader: Some(ClientProcess::this_process()),
                })
                .await;
        });
    }
}

/// Why reading a stored object failed.
pub(crate) enum ReadError {
    /// No live node holds a copy (it may be rebuilt from lineage).
    Lost(String),
    /// Anything else.
    Other(Error),
}

/// Writes `data` as a primary copy of `id` in the local store.
pub(crate) async fn write(raylet: &RayletClient, id: ObjectId, data: &[u8]) -> Result<()> {
    write_with(raylet, id, data.len(), |buffer| {
        buffer.copy_from_slice(data);
        Ok(())
    })
    .await
}

/// Deletes `id` from the local store, best effort (it is freed anyway when
/// its owner's process ends).
pub(crate) async fn delete(raylet: &RayletClient, id: ObjectId) {
    let _ = raylet
        .clone()
        .delete_object(photon_proto::v1::DeleteObjectRequest {
            object_id: id.to_vec(),
        })
        .await;
}

/// Creates `id` (`size` bytes) in the local store, lets `fill` write it in
/// place through shared memory (no intermediate copy), and seals it.
pub(crate) async fn write_with(
    raylet: &RayletClient,
    id: ObjectId,
    size: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<()> {
    let mut raylet = raylet.clone();
    let descriptor = match raylet
        .create_object(CreateObjectRequest {
            object_id: id.to_vec(),
            size: size as u64,
            writer: Some(ClientProcess::this_process()),
        })
        .await
    {
        Ok(reply) => reply.into_inner(),
        // A retried task whose first run already stored its result.
        Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
        Err(status) => return Err(Error::cluster(format!("cannot store object {id}"), &status)),
    };
    let descriptor = ObjectDescriptor::try_from(descriptor)
        .map_err(|e| Error::Cluster(format!("object {id}: {e}")))?;
    // Off the async runtime's worker: a 100 MiB copy takes tens of milliseconds.
    let fill_now = || {
        let mut mapping = MappedObjectMut::open(&descriptor)
            .map_err(|e| Error::Cluster(format!("cannot map object {id}: {e}")))?;
        fill(&mut mapping[..size])
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let filled = if multi_thread {
        tokio::task::block_in_place(fill_now)
    } else {
        // A current-thread runtime (e.g. `#[tokio::test]`) cannot block in place.
        fill_now()
    };
    if let Err(err) = filled {
        // Free the unsealed object now (the raylet would otherwise drop it
        // when this process ends, or when the id is created again).
        delete(&raylet, id).await;
        return Err(err);
    }
    raylet
        .seal_object(SealObjectRequest {
            object_id: id.to_vec(),
        })
        .await
        .map_err(|status| Error::cluster(format!("cannot seal object {id}"), &status))?;
    Ok(())
}

/// How to map an object read from the store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Wire in every page now (the reader deserializes all of it).
    Populated,
    /// Pages come in as they are touched (a record batch whose columns may
    /// not all be read).
    Lazy,
}

/// Maps `id` from the local store, pulling it from another node first.
pub(crate) async fn read(
    raylet: &RayletClient,
    id: ObjectId,
    how: Mapping,
) -> std::result::Result<ObjectBytes, ReadError> {
    let mut client = raylet.clone();
    let descriptor = match client
        .get_object(GetObjectRequest {
            object_id: id.to_vec(),
            fetch: true,
            reader: Some(ClientProcess::this_process()),
        })
        .await
    {
        Ok(reply) => reply.into_inner(),
        // No copy left, or this node's raylet itself is gone (its
        // connection refused, cut mid-call, or broken: tonic says Unknown
        // for a transport error; our raylet never answers Unknown itself).
        Err(status)
            if matches!(
                status.code(),
                Code::NotFound | Code::Unavailable | Code::Cancelled | Code::Unknown
            ) =>
        {
            return Err(ReadError::Lost(status.message().to_string()));
        }
        Err(status) => {
            return Err(ReadError::Other(Error::cluster(
                format!("cannot read object {id}"),
                &status,
            )));
        }
    };
    let descriptor = ObjectDescriptor::try_from(descriptor)
        .map_err(|e| ReadError::Other(Error::Cluster(format!("object {id}: {e}"))))?;
    let mapped = match how {
        Mapping::Populated => MappedObject::open_populated(&descriptor),
        Mapping::Lazy => MappedObject::open(&descriptor),
    };
    let mapping = mapped
        .map_err(|e| ReadError::Other(Error::Cluster(format!("cannot map object {id}: {e}"))))?;
    Ok(ObjectBytes::Mapped(Arc::new(MappedRead {
        mapping,
        raylet: raylet.clone(),
        id,
        runtime: tokio::runtime::Handle::current(),
    })))
}
