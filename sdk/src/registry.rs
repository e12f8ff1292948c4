//! The static registry the macros fill: every `#[photon::remote]` function
//! and `#[photon::actor]` class of the program, by stable name (`module::path`).
//! A worker is the same binary as its driver, so it finds what a task names here.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::object_io::ObjectBytes;

/// Arguments handed to a remote function or method: one byte slice each.
pub type Args = Vec<ObjectBytes>;

/// A boxed, sendable future.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// A remote function: decodes its arguments, runs, encodes its result.
pub struct RemoteFunction {
    /// `module::path::name`.
    pub name: &'static str,
    /// The generated invoker.
    pub invoke: fn(Args) -> BoxFuture<Result<Vec<u8>, String>>,
}

/// A live actor instance inside a worker.
pub trait ActorInstance: Send + Sync + 'static {
    /// Runs `method` with encoded arguments.
    fn call(self: Arc<Self>, method: &str, args: Args) -> BoxFuture<Result<Vec<u8>, String>>;
}

/// What constructing an actor yields.
pub type Constructed = Result<Arc<dyn ActorInstance>, String>;

/// An actor class: constructs instances by constructor name.
pub struct ActorClass {
    /// `module::path::Type`.
    pub name: &'static str,
    /// The generated constructor dispatcher.
    pub construct: fn(&str, Args) -> BoxFuture<Constructed>,
}

inventory::collect!(RemoteFunction);
inventory::collect!(ActorClass);

/// The function registered as `name`.
pub(crate) fn function(name: &str) -> Option<&'static RemoteFunction> {
    static FUNCTIONS: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    FUNCTIONS
        .get_or_init(|| {
            inventory::iter::<RemoteFunction>
                .into_iter()
                .map(|f| (f.name, f))
                .collect()
        })
        .get(name)
        .copied()
}

/// The actor class registered as `name`.
pub(crate) fn actor_class(name: &str) -> Option<&'static ActorClass> {
    inventory::iter::<ActorClass>
        .into_iter()
        .find(|class| class.name == name)
}

/// Deserializes an argument (for generated code).
pub fn decode<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T, String> {
    crate::codec::decode(data, what).map_err(|e| e.to_string())
}

/// Serializes a result (for generated code).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    crate::ref_wire::encode_return(value).map_err(|e| e.to_string())
}

/// Reads a record batch argument zero-copy (for generated code).
pub fn decode_batch(data: &ObjectBytes, what: &str) -> Result<arrow::array::RecordBatch, String> {
    crate::batch::decode_batch(data, what).map_err(|e| e.to_string())
}

/// Encodes a record batch result as Arrow IPC (for generated code).
pub fn encode_batch(batch: &arrow::array::RecordBatch) -> Result<Vec<u8>, String> {
    crate::ref_wire::skip_return();
    crate::batch::encode_batch(batch).map_err(|e| e.to_string())
}

/// Checks the argument count (for generated code).
pub fn check_arity(args: &Args, expected: usize, what: &str) -> Result<(), String> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} takes {expected} arguments but got {}; do the driver and the workers run the same build?",
            args.len()
        ))
    }
}
