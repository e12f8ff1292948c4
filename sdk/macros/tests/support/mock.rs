//! A stand-in for the `photon` runtime, with the same API as far as the macros use it. A test
//! crate includes it at its root next to `extern crate self as photon;`, so `::photon::...` in
//! the expansions resolves here. Tasks and actor calls run at once, on a small tokio runtime,
//! after a round trip through the registrations the macros submitted.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use photon_macros::{actor, main, method, remote};

/// The runtime's error type; here just a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

/// The runtime's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// An encoded argument.
pub struct TaskArg(Vec<u8>);

/// Task options, recorded so tests can compare them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Vec<(String, f64)>,
    pub max_retries: Option<u32>,
    pub retry_exceptions: Option<bool>,
}

impl TaskOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = Some(n);
        self
    }
    pub fn resource(mut self, name: &str, n: f64) -> Self {
        self.resources.push((name.to_owned(), n));
        self
    }
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    pub fn retry_exceptions(mut self, on: bool) -> Self {
        self.retry_exceptions = Some(on);
        self
    }
}

/// Actor options, recorded so tests can compare them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActorOptions {
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: Vec<(String, f64)>,
    pub max_restarts: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub name: Option<String>,
}

impl ActorOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = Some(n);
        self
    }
    pub fn resource(mut self, name: &str, n: f64) -> Self {
        self.resources.push((name.to_owned(), n));
        self
    }
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = Some(n);
        self
    }
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n);
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// As the SDK's: options of one actor method call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodOptions {
    pub name: Option<String>,
    pub max_retries: u32,
}

impl MethodOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
}

/// As the SDK's: one `ObjectRef`, or a tuple of them built from a framed result.
pub trait CallReturns: Sized {
    fn from_result(bytes: std::result::Result<Vec<u8>, String>) -> Self;
}

impl<T> CallReturns for ObjectRef<T> {
    fn from_result(bytes: std::result::Result<Vec<u8>, String>) -> Self {
        ObjectRef {
            bytes,
            _value: PhantomData,
        }
    }
}

/// The framed values of a call with several returns, split (the SDK's framing).
fn split(framed: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut rest = framed;
    while !rest.is_empty() {
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        parts.push(rest[8..8 + len].to_vec());
        rest = &rest[8 + len..];
    }
    parts
}

impl<A, B> CallReturns for (ObjectRef<A>, ObjectRef<B>) {
    fn from_result(bytes: std::result::Result<Vec<u8>, String>) -> Self {
        let parts = bytes.map(|b| split(&b));
        let part = |i: usize| parts.clone().map(|p| p[i].clone());
        (
            CallReturns::from_result(part(0)),
            CallReturns::from_result(part(1)),
        )
    }
}

/// A finished result, or the error that ended the call.
pub struct ObjectRef<T> {
    bytes: std::result::Result<Vec<u8>, String>,
    _value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> ObjectRef<T> {
    pub fn get(&self) -> std::result::Result<T, String> {
        let bytes = self.bytes.as_ref().map_err(Clone::clone)?;
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What a generated caller accepts for an argument of type `T`.
pub trait IntoArg<T> {
    fn into_arg(self) -> Result<TaskArg>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Result<TaskArg> {
        serde_json::to_vec(&self)
            .map(TaskArg)
            .map_err(|e| Error(e.to_string()))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Result<TaskArg> {
        (&self).into_arg()
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Result<TaskArg> {
        self.bytes.clone().map(TaskArg).map_err(Error)
    }
}

/// The driver: runs everything in process and records what was submitted.
pub struct Context {
    runtime: tokio::runtime::Runtime,
    pub tasks: Mutex<Vec<(&'static str, TaskOptions)>>,
    pub actors: Mutex<Vec<(&'static str, &'static str, ActorOptions)>>,
    named: Mutex<HashMap<String, ActorHandle>>,
}

impl Default for Context {
    fn default() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Context {
            runtime,
            tasks: Mutex::default(),
            actors: Mutex::default(),
            named: Mutex::default(),
        }
    }
}

fn collect(args: Vec<Result<TaskArg>>) -> std::result::Result<__private::Args, String> {
    args.into_iter()
        .map(|a| a.map(|TaskArg(b)| __private::ArgData(b)).map_err(|e| e.0))
        .collect()
}

impl Context {
    pub fn submit_task<T: DeserializeOwned>(
        &self,
        function: &'static str,
        options: TaskOptions,
        args: Vec<Result<TaskArg>>,
    ) -> ObjectRef<T> {
        self.submit_task_returning(function, options, args)
    }

    pub fn submit_task_returning<R: CallReturns>(
        &self,
        function: &'static str,
        options: TaskOptions,
        args: Vec<Result<TaskArg>>,
    ) -> R {
        self.tasks.lock().unwrap().push((function, options));
        R::from_result(collect(args).and_then(|args| self.invoke(function, args)))
    }

    /// Runs a registered function the way a worker would.
    pub fn invoke(
        &self,
        function: &str,
        args: __private::Args,
    ) -> std::result::Result<Vec<u8>, String> {
        let registered = inventory::iter::<__private::RemoteFunction>
            .into_iter()
            .find(|f| f.name == function)
            .ok_or_else(|| format!("no function {function}"))?;
        self.runtime.block_on((registered.invoke)(args))
    }

    pub fn create_actor(
        &self,
        class: &'static str,
        constructor: &'static str,
        options: ActorOptions,
        args: Vec<Result<TaskArg>>,
    ) -> Result<ActorHandle> {
        self.actors
            .lock()
            .unwrap()
            .push((class, constructor, options.clone()));
        let registered = inventory::iter::<__private::ActorClass>
            .into_iter()
            .find(|c| c.name == class)
            .ok_or_else(|| Error(format!("no class {class}")))?;
        let args = collect(args).map_err(Error)?;
        let instance = self
            .runtime
            .block_on((registered.construct)(constructor, args))
            .map_err(Error)?;
        let handle = ActorHandle {
            class,
            instance,
            runtime: self.runtime.handle().clone(),
            calls: Arc::default(),
        };
        if let Some(name) = options.name {
            self.named.lock().unwrap().insert(name, handle.clone());
        }
        Ok(handle)
    }

    pub fn get_actor(&self, name: &str, class: &'static str) -> Result<ActorHandle> {
        let named = self.named.lock().unwrap();
        match named.get(name) {
            Some(handle) if handle.class == class => Ok(handle.clone()),
            Some(handle) => Err(Error(format!(
                "{name} is a {}, not a {class}",
                handle.class
            ))),
            None => Err(Error(format!("no actor named {name}"))),
        }
    }
}

/// An actor, called in process.
#[derive(Clone)]
pub struct ActorHandle {
    class: &'static str,
    instance: Arc<dyn __private::ActorInstance>,
    runtime: tokio::runtime::Handle,
    /// Each call's method and options.
    pub calls: Arc<Mutex<Vec<(&'static str, MethodOptions)>>>,
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({})", self.class)
    }
}

// Handles in process travel by name only in the SDK; the mock just has to compile
// the generated impls.
impl serde::Serialize for ActorHandle {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.class)
    }
}

impl<'de> serde::Deserialize<'de> for ActorHandle {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "the mock cannot decode actor handles",
        ))
    }
}

impl ActorHandle {
    pub fn call<T>(&self, method: &'static str, args: Vec<Result<TaskArg>>) -> ObjectRef<T> {
        self.call_with(method, MethodOptions::new(), args)
    }

    pub fn call_with<R: CallReturns>(
        &self,
        method: &'static str,
        options: MethodOptions,
        args: Vec<Result<TaskArg>>,
    ) -> R {
        self.calls.lock().unwrap().push((method, options));
        let result = collect(args).and_then(|args| {
            self.runtime
                .block_on(self.instance.clone().call(method, args))
        });
        R::from_result(result)
    }
}

static WORKER_ENTRY_CALLED: AtomicBool = AtomicBool::new(false);

pub fn worker_entry() {
    WORKER_ENTRY_CALLED.store(true, Ordering::SeqCst);
}

pub fn worker_entry_called() -> bool {
    WORKER_ENTRY_CALLED.load(Ordering::SeqCst)
}

pub mod __private {
    use std::ops::Deref;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use inventory;
    pub use serde;
    pub use tokio::sync::RwLock;

    pub struct ArgData(pub Vec<u8>);

    /// As the SDK's: a decoded handle must be of the expected class.
    pub fn check_actor_class(handle: &super::ActorHandle, class: &str) -> Result<(), String> {
        if handle.class == class {
            Ok(())
        } else {
            Err(format!("a {} is not a {class}", handle.class))
        }
    }

    /// As the SDK's: runs a synchronous body (here simply in place).
    pub fn run_blocking<T>(body: impl FnOnce() -> T) -> T {
        body()
    }

    impl Deref for ArgData {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }

    pub type Args = Vec<ArgData>;
    pub type BoxFuture<T> =
        std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

    pub fn decode<T: DeserializeOwned>(data: &[u8], what: &str) -> Result<T, String> {
        serde_json::from_slice(data).map_err(|e| format!("cannot decode {what}: {e}"))
    }

    pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }

    pub fn encode_returns(parts: Vec<Result<Vec<u8>, String>>) -> Result<Vec<u8>, String> {
        let mut framed = Vec::new();
        for part in parts {
            let part = part?;
            framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
            framed.extend_from_slice(&part);
        }
        Ok(framed)
    }

    pub fn check_arity(args: &Args, expected: usize, what: &str) -> Result<(), String> {
        if args.len() == expected {
            Ok(())
        } else {
            Err(format!(
                "{what} takes {expected} arguments, got {}",
                args.len()
            ))
        }
    }

    pub struct RemoteFunction {
        pub name: &'static str,
        pub invoke: fn(Args) -> BoxFuture<Result<Vec<u8>, String>>,
    }

    pub trait ActorInstance: Send + Sync + 'static {
        fn call(
            self: std::sync::Arc<Self>,
            method: &str,
            args: Args,
        ) -> BoxFuture<Result<Vec<u8>, String>>;
    }

    pub type Construct =
        fn(&str, Args) -> BoxFuture<Result<std::sync::Arc<dyn ActorInstance>, String>>;

    pub struct ActorClass {
        pub name: &'static str,
        pub construct: Construct,
    }

    inventory::collect!(RemoteFunction);
    inventory::collect!(ActorClass);
}
