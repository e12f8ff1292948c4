//! Moving values in and out of a node's shared-memory store from a client
//! process (driver or worker): the raylet hands out descriptors, the client
//! maps the pages itself, so a large value is copied once (into the store)
//! and read in place.

use std::ops::Deref;

use bytes::Bytes;
use photon_object_store::{MappedObject, MappedObjectMut, ObjectDescriptor};
use photon_proto::ObjectId;
use photon_proto::v1::{
    CreateObjectRequest, GetObjectRequest, ReleaseObjectRequest, SealObjectRequest,
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
    Mapped(Box<MappedRead>),
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
}

impl Drop for MappedRead {
    fn drop(&mut self) {
        let mut raylet = self.raylet.clone();
        let id = self.id;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = raylet
                    .release_object(ReleaseObjectRequest {
                        object_id: id.to_vec(),
                    })
                    .await;
            });
        }
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
    let filled = tokio::task::block_in_place(|| {
        let mut mapping = MappedObjectMut::open(&descriptor)
            .map_err(|e| Error::Cluster(format!("cannot map object {id}: {e}")))?;
        fill(&mut mapping[..size])
    });
    if let Err(err) = filled {
        // The raylet drops the unsealed object when the id is created again;
        // free it now instead.
        let _ = raylet
            .delete_object(photon_proto::v1::DeleteObjectRequest {
                object_id: id.to_vec(),
            })
            .await;
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

/// Maps `id` from the local store, pulling it from another node first.
pub(crate) async fn read(
    raylet: &RayletClient,
    id: ObjectId,
) -> std::result::Result<ObjectBytes, ReadError> {
    let mut client = raylet.clone();
    let descriptor = match client
        .get_object(GetObjectRequest {
            object_id: id.to_vec(),
            fetch: true,
        })
        .await
    {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == Code::NotFound => {
            return Err(ReadError::Lost(status.message().to_string()));
        }
        Err(status) if status.code() == Code::Unavailable => {
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
    let mapping = MappedObject::open_populated(&descriptor)
        .map_err(|e| ReadError::Other(Error::Cluster(format!("cannot map object {id}: {e}"))))?;
    Ok(ObjectBytes::Mapped(Box::new(MappedRead {
        mapping,
        raylet: raylet.clone(),
        id,
    })))
}
