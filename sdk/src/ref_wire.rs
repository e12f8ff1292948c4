//! References inside values (Ray's borrowed references): an `ObjectRef` or
//! an actor handle inside a remote call's argument or return value (any
//! serde type) travels as its id.
//!
//! - Encoding an argument collects the object references it contains; the
//!   caller holds them until the call is done, after storing each in the
//!   object store if it was inline (a borrower reads it from there), and
//!   marks them lent: when its own last reference drops it tells the head
//!   instead of freeing the object (`borrows.rs`).
//! - A return value's references are readied the same way by the worker,
//!   which tells the head that the return object holds each (before its
//!   reply); the caller ends that hold when it frees the return object.
//! - Decoding attaches each reference to the process that reads it: its own
//!   object again, or a borrowed reference that the head counts from its
//!   first decoding (sent before the call's reply) until the process drops
//!   its last one.
//! - An actor handle needs no count: actors end with their owner, their job
//!   or a kill, not with their last handle.
//!
//! An object reference inside a `put` value is refused with an error that
//! says so.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use photon_proto::{ActorId, ObjectId};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::actor_client::ActorHandle;
use crate::codec;
use crate::context::Core;
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, RefHandle};

thread_local! {
    /// While an argument is encoded: the object references it contains.
    static CONTAINED: RefCell<Option<Vec<Arc<RefHandle>>>> = const { RefCell::new(None) };
    /// The core of the process whose `Context::get` decoded a value on this
    /// thread last (kept, not reset: every get sets it, and comparing is
    /// cheaper than a reference count on every get).
    static DECODER: RefCell<Weak<Core>> = const { RefCell::new(Weak::new()) };
    /// Why a reference refused to be encoded or decoded (the codec reports
    /// it: postcard keeps no custom message).
    static REFUSAL: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records why a reference refused, and makes serde's error of it.
pub(crate) fn refuse<E: std::fmt::Display, Custom>(
    why: E,
    custom: impl FnOnce(String) -> Custom,
) -> Custom {
    let why = why.to_string();
    REFUSAL.with(|r| *r.borrow_mut() = Some(why.clone()));
    custom(why)
}

/// Why a reference refused, since the last call (for the codec's errors).
pub(crate) fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

/// The object references inside a running call's return values, by return
/// index, as its generated code encodes them (one encoding per return, in
/// order).
#[derive(Default)]
struct ReturnedRefs {
    encoded: u32,
    refs: Vec<(u32, Arc<RefHandle>)>,
}

tokio::task_local! {
    /// The running call's.
    static RETURNED: RefCell<ReturnedRefs>;
}

/// Runs a call; its output and the references its return values contain,
/// by return index.
pub(crate) async fn collecting_returns<F: std::future::Future>(
    call: F,
) -> (F::Output, Vec<(u32, Arc<RefHandle>)>) {
    let mut call = std::pin::pin!(RETURNED.scope(RefCell::default(), call));
    let output = call.as_mut().await;
    let returned = call.take_value().map(|r| r.into_inner().refs);
    (output, returned.unwrap_or_default())
}

/// Encodes one of a running call's return values (for generated code),
/// noting the references inside it; outside a call, as any value.
pub(crate) fn encode_return<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    if RETURNED.try_with(|_| ()).is_err() {
        return codec::encode(value);
    }
    let (bytes, contained) = encode_argument(value)?;
    RETURNED.with(|returned| {
        let mut returned = returned.borrow_mut();
        let index = returned.encoded;
        returned.encoded += 1;
        returned
            .refs
            .extend(contained.into_iter().map(|handle| (index, handle)));
    });
    Ok(bytes)
}

/// A return value encoded otherwise (a record batch) takes its index.
pub(crate) fn skip_return() {
    let _ = RETURNED.try_with(|returned| returned.borrow_mut().encoded += 1);
}

/// Encodes a call's argument and the object references inside it.
pub(crate) fn encode_argument<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<Arc<RefHandle>>)> {
    let outer = CONTAINED.with(|c| c.replace(Some(Vec::new())));
    let encoded = codec::encode(value);
    let contained = CONTAINED.with(|c| c.replace(outer)).unwrap_or_default();
    Ok((encoded?, contained))
}

/// Runs `decode` with references inside the value attached to `core`.
pub(crate) fn decode_for<T>(core: &Arc<Core>, decode: impl FnOnce() -> T) -> T {
    DECODER.with(|d| {
        let mut decoder = d.borrow_mut();
        if !std::ptr::eq(decoder.as_ptr(), Arc::as_ptr(core)) {
            *decoder = Arc::downgrade(core);
        }
    });
    decode()
}

/// The process's core a decoded reference belongs to: the one `get` last
/// named on this thread, else (an argument decoded in a worker) the
/// worker's own.
fn decoder() -> Result<Arc<Core>> {
    if let Some(core) = DECODER.with(|d| d.borrow().upgrade()) {
        return Ok(core);
    }
    if let Some(core) = crate::worker_context::made() {
        return Ok(core.clone());
    }
    if crate::worker::is_worker() {
        return Ok(crate::worker_context::get()?.core.clone());
    }
    Err(Error::Serialization(
        "an ObjectRef or actor handle inside a value can be read only by photon: as a remote \
         call's argument, or with Context::get"
            .into(),
    ))
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let noted = CONTAINED.with(|c| match c.borrow_mut().as_mut() {
            Some(contained) => {
                contained.push(self.handle.clone());
                true
            }
            None => false,
        });
        if !noted {
            let why = format!(
                "object reference {} can travel inside a remote call's arguments and return \
                 values only, not inside a put value: pass it to the task or actor that needs it",
                self.id()
            );
            return Err(refuse(why, S::Error::custom));
        }
        self.id().as_bytes().serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::from_bytes(<[u8; ObjectId::SIZE]>::deserialize(deserializer)?);
        let core = decoder().map_err(|e| refuse(e, D::Error::custom))?;
        Ok(ObjectRef::new(core.ref_from_value(id)))
    }
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (self.id().as_bytes(), self.class()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let (id, class) = <([u8; ActorId::SIZE], String)>::deserialize(deserializer)?;
        let class = crate::registry::actor_class(&class)
            .ok_or_else(|| {
                let why = format!(
                    "actor class {class} is not in this program (do the driver and the workers \
                     run the same build?)"
                );
                refuse(why, D::Error::custom)
            })?
            .name;
        let core = decoder().map_err(|e| refuse(e, D::Error::custom))?;
        Ok(ActorHandle::attached(ActorId::from_bytes(id), class, core))
    }
}
