//! The two handles a store gives out: a writer for an unsealed object and a
//! pinned read-only view of a sealed one. Both point straight into the
//! shared-memory segment; neither copies.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use photon_proto::ObjectId;

use crate::descriptor::ObjectDescriptor;
use crate::error::Result;
use crate::store::Inner;

/// Writable bytes of an object being created. [`seal`](Self::seal) makes it
/// immutable and visible; dropping the writer unsealed aborts the object and
/// reclaims its space.
pub struct ObjectWriter {
    store: Arc<Inner>,
    id: ObjectId,
    offset: u64,
    size: u64,
    finished: bool,
}

// SAFETY: the writer is the only handle to its byte range (the allocator hands
// each range to one object, and an unsealed object has no views), and the
// `Arc<Inner>` keeps the mapping alive, so moving it across threads is sound.
unsafe impl Send for ObjectWriter {}

impl ObjectWriter {
    pub(crate) fn new(store: Arc<Inner>, id: ObjectId, offset: u64, size: u64) -> Self {
        Self {
            store,
            id,
            offset,
            size,
            finished: false,
        }
    }

    /// The object being written.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Makes the object immutable and readable by `get`.
    pub fn seal(mut self) -> Result<()> {
        self.finished = true;
        self.store.seal_local(self.id)
    }

    /// Hands the write to another process on this node: returns a writable
    /// descriptor it can map with [`crate::MappedObjectMut::open`]. Finish with
    /// [`crate::ObjectStore::seal`] or [`crate::ObjectStore::abort`].
    pub fn into_descriptor(mut self) -> ObjectDescriptor {
        self.finished = true;
        self.store.hand_to_remote_writer(self.id);
        self.descriptor(true)
    }

    fn descriptor(&self, writable: bool) -> ObjectDescriptor {
        ObjectDescriptor {
            object_id: self.id,
            segment_path: self.store.segment().path().to_path_buf(),
            offset: self.offset,
            size: self.size,
            writable,
        }
    }
}

impl Deref for ObjectWriter {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: [offset, offset+size) lies inside the live mapping and
        // belongs to this writer alone (see the Send impl).
        unsafe {
            std::slice::from_raw_parts(
                self.store.segment().base().add(self.offset as usize),
                self.size as usize,
            )
        }
    }
}

impl DerefMut for ObjectWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only live slice.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.store.segment().base().add(self.offset as usize),
                self.size as usize,
            )
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.store.abort_local(self.id);
        }
    }
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish()
    }
}

/// A pinned, read-only, zero-copy view of a sealed object. While it lives the
/// object is neither evicted, spilled nor freed; dropping it releases the pin.
pub struct ObjectView {
    store: Arc<Inner>,
    id: ObjectId,
    offset: u64,
    size: u64,
}

// SAFETY: a sealed object's bytes never change while pinned, and the
// `Arc<Inner>` keeps the mapping alive: sharing and sending views is sound.
unsafe impl Send for ObjectView {}
unsafe impl Sync for ObjectView {}

impl ObjectView {
    pub(crate) fn new(store: Arc<Inner>, id: ObjectId, offset: u64, size: u64) -> Self {
        Self {
            store,
            id,
            offset,
            size,
        }
    }

    /// The object.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// A read-only descriptor another process on this node can map. Keep this
    /// view alive while that process reads: the view is what pins the object.
    pub fn descriptor(&self) -> ObjectDescriptor {
        ObjectDescriptor {
            object_id: self.id,
            segment_path: self.store.segment().path().to_path_buf(),
            offset: self.offset,
            size: self.size,
            writable: false,
        }
    }
}

impl Deref for ObjectView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the range is inside the live mapping, sealed (immutable) and
        // pinned (not freed or reused) while this view exists.
        unsafe {
            std::slice::from_raw_parts(
                self.store.segment().base().add(self.offset as usize),
                self.size as usize,
            )
        }
    }
}

impl AsRef<[u8]> for ObjectView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ObjectView {
    fn drop(&mut self) {
        self.store.release(self.id);
    }
}

impl std::fmt::Debug for ObjectView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectView")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish()
    }
}
