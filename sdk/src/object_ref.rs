//! `ObjectRef<T>`: a typed reference to a value that a task will produce (or
//! `put` made). References are counted: when the last clone drops, the owner
//! frees the object (and, once nothing needs it, its lineage).

use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use photon_proto::ObjectId;
use serde::Serialize;

use crate::context::Core;
use crate::error::Result;

/// One counted reference held by the owner's object table.
pub(crate) struct RefHandle {
    pub(crate) id: ObjectId,
    pub(crate) core: Weak<Core>,
}

impl Drop for RefHandle {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.release_object(self.id);
        }
    }
}

/// A value a task will produce, or that `put` stored. Get it with
/// [`crate::Context::get`]; pass it to other tasks as an argument without
/// fetching it.
pub struct ObjectRef<T> {
    pub(crate) handle: Arc<RefHandle>,
    _value: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn new(handle: Arc<RefHandle>) -> Self {
        Self {
            handle,
            _value: PhantomData,
        }
    }

    /// The object's id (deterministic: a re-run task recreates it).
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self::new(self.handle.clone())
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.handle.id)
    }
}

/// One argument of a remote call: a value, or a reference resolved before
/// the task runs.
pub struct TaskArg(pub(crate) ArgKind);

pub(crate) enum ArgKind {
    /// Encoded, with the object references inside it (held, and lent,
    /// until the call is done).
    Value(Bytes, Vec<Arc<RefHandle>>),
    Ref(Arc<RefHandle>),
}

/// What may be passed where a remote function takes a `T`: a `T`, or an
/// `ObjectRef<T>` (owned or borrowed).
pub trait IntoArg<T> {
    /// Serializes the value, or keeps the reference.
    fn into_arg(self) -> Result<TaskArg>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Result<TaskArg> {
        let (bytes, contained) = crate::ref_wire::encode_argument(&self)?;
        Ok(TaskArg(ArgKind::Value(Bytes::from(bytes), contained)))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Result<TaskArg> {
        Ok(TaskArg(ArgKind::Ref(self.handle)))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Result<TaskArg> {
        Ok(TaskArg(ArgKind::Ref(self.handle.clone())))
    }
}
