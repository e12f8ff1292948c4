//! Cross-process zero-copy access. The raylet owns the store; a worker on the
//! same node receives an [`ObjectDescriptor`] (over its Unix socket, as the
//! protobuf `photon.v1.ObjectDescriptor`) and maps the object's bytes from the
//! segment file itself. Nothing is copied: both processes see the same pages.

use std::fs::OpenOptions;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use memmap2::{Mmap, MmapMut, MmapOptions};
use photon_proto::{ObjectId, v1};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where an object's bytes live in a node's segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDescriptor {
    /// The object.
    pub object_id: ObjectId,
    /// The segment file to map.
    pub segment_path: PathBuf,
    /// Byte offset of the object in the segment.
    pub offset: u64,
    /// Object size in bytes.
    pub size: u64,
    /// True for an object handed to another process to write (not yet sealed).
    pub writable: bool,
}

impl From<&ObjectDescriptor> for v1::ObjectDescriptor {
    fn from(descriptor: &ObjectDescriptor) -> Self {
        Self {
            object_id: descriptor.object_id.to_vec(),
            segment_path: descriptor.segment_path.to_string_lossy().into_owned(),
            offset: descriptor.offset,
            size: descriptor.size,
            writable: descriptor.writable,
        }
    }
}

impl TryFrom<v1::ObjectDescriptor> for ObjectDescriptor {
    type Error = Error;

    fn try_from(message: v1::ObjectDescriptor) -> Result<Self> {
        let object_id =
            ObjectId::from_slice(&message.object_id).map_err(|err| Error::InvalidDescriptor {
                id: hex_or_empty(&message.object_id),
                reason: err.to_string(),
            })?;
        if message.segment_path.is_empty() {
            return Err(Error::InvalidDescriptor {
                id: object_id.to_string(),
                reason: "segment_path is empty".into(),
            });
        }
        Ok(Self {
            object_id,
            segment_path: PathBuf::from(message.segment_path),
            offset: message.offset,
            size: message.size,
            writable: message.writable,
        })
    }
}

fn hex_or_empty(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "<empty object id>".into()
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Opens the segment and checks the descriptor fits inside it.
fn open_segment(descriptor: &ObjectDescriptor, write: bool) -> Result<std::fs::File> {
    let path = &descriptor.segment_path;
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(Error::io(format!(
            "cannot open segment {} for object {}",
            path.display(),
            descriptor.object_id
        )))?;
    let len = file
        .metadata()
        .map_err(Error::io(format!("cannot stat segment {}", path.display())))?
        .len();
    let end = descriptor.offset.checked_add(descriptor.size);
    if descriptor.size == 0 || end.is_none_or(|end| end > len) {
        return Err(Error::InvalidDescriptor {
            id: descriptor.object_id.to_string(),
            reason: format!(
                "bytes {}..+{} do not fit segment {} of {len} bytes",
                descriptor.offset,
                descriptor.size,
                path.display()
            ),
        });
    }
    Ok(file)
}

fn options(descriptor: &ObjectDescriptor, populate: bool) -> MmapOptions {
    let mut options = MmapOptions::new();
    options
        .offset(descriptor.offset)
        .len(descriptor.size as usize);
    if populate {
        options.populate();
    }
    options
}

/// A sealed object mapped read-only from another process's store.
#[derive(Debug)]
pub struct MappedObject {
    id: ObjectId,
    mmap: Mmap,
}

impl MappedObject {
    /// Maps the object lazily: pages are wired in as they are first read.
    pub fn open(descriptor: &ObjectDescriptor) -> Result<Self> {
        Self::map(descriptor, false)
    }

    /// Maps the object and wires in every page up front (`MAP_POPULATE`): one
    /// kernel call instead of a fault per page, for readers that touch it all.
    pub fn open_populated(descriptor: &ObjectDescriptor) -> Result<Self> {
        Self::map(descriptor, true)
    }

    fn map(descriptor: &ObjectDescriptor, populate: bool) -> Result<Self> {
        let file = open_segment(descriptor, false)?;
        // SAFETY: the owning store pins sealed objects while a descriptor is
        // lent, and sealed bytes are never written again.
        let mmap =
            unsafe { options(descriptor, populate).map(&file) }.map_err(Error::io(format!(
                "cannot map object {} from {}",
                descriptor.object_id,
                descriptor.segment_path.display()
            )))?;
        Ok(Self {
            id: descriptor.object_id,
            mmap,
        })
    }

    /// The object.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

impl Deref for MappedObject {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.mmap
    }
}

/// An unsealed object mapped writable by the process that fills it.
#[derive(Debug)]
pub struct MappedObjectMut {
    id: ObjectId,
    mmap: MmapMut,
}

impl MappedObjectMut {
    /// Maps an object whose writer was handed over with
    /// [`crate::ObjectWriter::into_descriptor`], every page wired in up
    /// front (`MAP_POPULATE`): the writer fills it all.
    pub fn open(descriptor: &ObjectDescriptor) -> Result<Self> {
        if !descriptor.writable {
            return Err(Error::InvalidDescriptor {
                id: descriptor.object_id.to_string(),
                reason: "descriptor is read-only (the object is sealed)".into(),
            });
        }
        let file = open_segment(descriptor, true)?;
        // SAFETY: the store gave this range to one unsealed object and handed
        // its only writer to us; nobody else reads or writes it until sealed.
        let mmap =
            unsafe { options(descriptor, true).map_mut(&file) }.map_err(Error::io(format!(
                "cannot map object {} from {} for writing",
                descriptor.object_id,
                descriptor.segment_path.display()
            )))?;
        Ok(Self {
            id: descriptor.object_id,
            mmap,
        })
    }

    /// The object.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

impl Deref for MappedObjectMut {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.mmap
    }
}

impl DerefMut for MappedObjectMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mmap
    }
}
