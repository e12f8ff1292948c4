//! The worker runtime: a process the raylet started from the driver's own
//! binary. It serves `photon.v1.Worker`, registers with its raylet, and runs
//! the tasks (or, for an actor, the method calls) drivers push to it:
//! arguments inline or mapped from the node's store, results inline when
//! small, else written into the store.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use photon_proto::auth::RequireToken;
use photon_proto::v1::worker_server::{Worker, WorkerServer};
use photon_proto::v1::{
    ActorReadyRequest, ActorSpec, CancelTaskReply, CancelTaskRequest, RegisterWorkerRequest,
    ReturnObject, StoredObject, TaskArg as ProtoArg, TaskFailure, TaskReply, TaskSpec,
    return_object, task_arg, task_reply,
};
use photon_proto::{ActorId, NodeId, ObjectId, WorkerId};
use photon_raylet::worker_pool::env;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::clients::{self, RayletClient};
use crate::error::{Error, Result};
use crate::object_io::{self, INLINE_MAX, Mapping, ObjectBytes, ReadError};
use crate::progress::{ReplySender, TaskProgress};
use crate::registry::{self, ActorInstance, Args};
use crate::worker_context;

/// Where this process runs, for messages about what a node cannot do: a
/// worker's node (its raylet's address and host name), else this host.
pub fn where_this_runs() -> String {
    let host = photon_raylet::hostname();
    match std::env::var(env::RAYLET_ADDRESS) {
        Ok(raylet) if std::env::var_os(env::WORKER).is_some() => {
            format!("the node at {raylet} (host {host:?})")
        }
        _ => format!("host {host:?}"),
    }
}

/// True in a process a raylet started as a worker (`PHOTON_WORKER=1`).
pub(crate) fn is_worker() -> bool {
    std::env::var(env::WORKER).as_deref() == Ok("1")
}

/// If this process was started as a worker (`PHOTON_WORKER=1`), runs the
/// worker loop and exits; otherwise returns at once. Call it first thing in
/// `main` (`#[photon::main]` does).
pub fn worker_entry() {
    if !is_worker() {
        return;
    }
    let code = match run() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("photon worker: {err}");
            1
        }
    };
    std::process::exit(code);
}

fn run() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::runtime_threads())
        .thread_name("photon-worker")
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the worker runtime: {e}")))?;
    runtime.block_on(serve())
}

async fn serve() -> Result<()> {
    // The node's TLS, passed down by the raylet (plaintext when it passed none).
    photon_proto::tls::configure(photon_proto::tls::Tls::from_env().map_err(Error::Config)?);
    crate::worker_context::set_runtime(tokio::runtime::Handle::current());
    let worker_id: WorkerId = worker_context::parsed(env::WORKER_ID)?;
    let raylet_address = worker_context::var(env::RAYLET_ADDRESS)?;
    let token = worker_context::var(env::TOKEN)?;
    let node_id: NodeId = worker_context::parsed(env::NODE_ID)?;
    let raylet = clients::raylet(&raylet_address, &token)?;
    let host = raylet_address
        .rsplit_once(':')
        .map_or("127.0.0.1", |(host, _)| host);
    let listener = tokio::net::TcpListener::bind(format!("{host}:0"))
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {host}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?
        .to_string();
    let executor = Arc::new(Executor {
        raylet: raylet.clone(),
        raylet_address: raylet_address.clone(),
        node_id,
        pid: std::process::id(),
        actor: std::sync::OnceLock::new(),
        calls: crate::cancel::Calls::default(),
    });
    let service = WorkerService {
        executor: executor.clone(),
    };
    let server = tokio::spawn(
        photon_proto::tls::server()
            .map_err(Error::Config)?
            .tcp_nodelay(true)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                WorkerServer::new(service)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
                RequireToken::new(token.clone()),
            ))
            .serve_with_incoming(photon_proto::net::incoming_nodelay(listener)),
    );
    let reply = raylet
        .clone()
        .register_worker(RegisterWorkerRequest {
            worker_id: worker_id.to_vec(),
            address,
        })
        .await
        .map_err(|s| {
            Error::cluster(
                format!("cannot register with the raylet at {raylet_address}"),
                &s,
            )
        })?
        .into_inner();
    if let Some(spec) = reply.actor {
        construct_actor(&executor, worker_id, spec).await?;
    }
    server
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?
        .map_err(|e| Error::Cluster(format!("worker server: {e}")))
}

/// Runs the actor's constructor and tells the raylet how it went; a failed
/// constructor ends the process (the head restarts or buries the actor).
async fn construct_actor(
    executor: &Arc<Executor>,
    worker: WorkerId,
    spec: ActorSpec,
) -> Result<()> {
    let actor = ActorId::from_slice(&spec.actor_id).map_err(|e| Error::Config(e.to_string()))?;
    let outcome = async {
        let class = registry::actor_class(&spec.class_name).ok_or_else(|| {
            format!(
                "this program has no actor class {} (is the worker the driver's build?)",
                spec.class_name
            )
        })?;
        let args = executor
            .fetch_args(&spec.constructor_args)
            .await
            .map_err(|failure| failure.message)?;
        let max_concurrency = spec.max_concurrency.max(1) as usize;
        match AssertUnwindSafe((class.construct)(&spec.constructor, args))
            .catch_unwind()
            .await
        {
            Ok(Ok(instance)) => Ok((instance, max_concurrency)),
            Ok(Err(message)) => Err(message),
            Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
        }
    }
    .await;
    let error = match outcome {
        Ok((instance, max_concurrency)) => {
            let _ = executor.actor.set(ActorRuntime {
                instance,
                calls: Arc::new(Semaphore::new(max_concurrency)),
                max_concurrency,
            });
            String::new()
        }
        Err(message) => format!("{}::{}: {message}", spec.class_name, spec.constructor),
    };
    executor
        .raylet
        .clone()
        .actor_ready(ActorReadyRequest {
            actor_id: actor.to_vec(),
            worker_id: worker.to_vec(),
            error: error.clone(),
        })
        .await
        .map_err(|s| Error::cluster("cannot report the actor's construction", &s))?;
    if error.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "actor {actor}: constructor failed: {error}"
        )))
    }
}

struct ActorRuntime {
    instance: Arc<dyn ActorInstance>,
    calls: Arc<Semaphore>,
    max_concurrency: usize,
}

struct Executor {
    raylet: RayletClient,
    raylet_address: String,
    node_id: NodeId,
    pid: u32,
    actor: std::sync::OnceLock<ActorRuntime>,
    /// Cancellation tokens of the calls pushed here.
    calls: crate::cancel::Calls,
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".into())
}

// The RPCs of the rare paths (reading a stored argument, storing a large
// result, lending, flushing borrows) are boxed where they are awaited:
// inline, their futures would make every call's future several kilobytes,
// copied each time it is wrapped or moved.
impl Executor {
    fn failure(&self, message: String) -> TaskFailure {
        TaskFailure {
            message,
            node_address: self.raylet_address.clone(),
            pid: self.pid,
            ..Default::default()
        }
    }

    /// A failure of the system around the call, not of its code: worth a retry elsewhere.
    fn system_failure(&self, message: String) -> TaskFailure {
        let mut failure = self.failure(message);
        failure.system = true;
        failure
    }

    fn cancelled(&self, when: &str) -> TaskFailure {
        let mut failure = self.failure(format!("cancelled by its owner {when}"));
        failure.cancelled = true;
        failure
    }

    /// Waits until the head counts the references this worker borrowed (or
    /// dropped) so far: the caller lets go of what it passed once it has
    /// the reply.
    async fn count_borrows(&self) -> std::result::Result<(), TaskFailure> {
        let Some(core) = crate::worker_context::made() else {
            return Ok(());
        };
        if core.borrows.idle() {
            return Ok(());
        }
        Box::pin(core.borrows.flush(core))
            .await
            .map_err(|err| self.system_failure(err.to_string()))
    }

    /// Argument bytes: inline, or mapped from this node's store (pulled first if remote).
    async fn fetch_args(&self, args: &[ProtoArg]) -> std::result::Result<Args, TaskFailure> {
        let mut fetched = Vec::with_capacity(args.len());
        for arg in args {
            match &arg.kind {
                Some(task_arg::Kind::Value(bytes)) => {
                    fetched.push(ObjectBytes::Inline(bytes.clone()))
                }
                Some(task_arg::Kind::ObjectId(id)) => {
                    let id = ObjectId::from_slice(id)
                        .map_err(|e| self.system_failure(format!("bad argument id: {e}")))?;
                    // Lazily: a record batch argument may be read column by column.
                    match Box::pin(object_io::read(&self.raylet, id, Mapping::Lazy)).await {
                        Ok(bytes) => fetched.push(bytes),
                        Err(ReadError::Lost(why)) => {
                            let mut f =
                                self.system_failure(format!("argument {id} is lost: {why}"));
                            f.lost_object = id.to_vec();
                            return Err(f);
                        }
                        Err(ReadError::Other(err)) => {
                            return Err(
                                self.system_failure(format!("cannot read argument {id}: {err}"))
                            );
                        }
                    }
                }
                None => fetched.push(ObjectBytes::Inline(bytes::Bytes::new())),
            }
        }
        Ok(fetched)
    }

    /// Runs one task or actor call and builds its reply; the call reports
    /// its progress on `replies` as it goes.
    async fn execute(
        self: Arc<Self>,
        spec: TaskSpec,
        replies: ReplySender,
        cancel: CancellationToken,
    ) -> TaskReply {
        let progress = TaskProgress::for_call(spec.task_id.clone(), replies);
        // `returned` is held until the reply is built: the head learns that
        // the return objects hold them before this worker lets go.
        let (outcome, returned) = if cancel.is_cancelled() {
            (Err(self.cancelled("before it started")), Vec::new())
        } else {
            let run = crate::ref_wire::collecting_returns(self.run(&spec));
            let run = progress.scope(crate::cancel::scope(cancel.clone(), run));
            tokio::select! {
                biased;
                ran = run => ran,
                () = cancel.cancelled() => (Err(self.cancelled("while it ran")), Vec::new()),
            }
        };
        self.calls.finished(&spec.task_id);
        let outcome = match outcome {
            Ok(bytes) if !returned.is_empty() => Box::pin(self.lend_returned(&spec, &returned))
                .await
                .map(|()| bytes),
            outcome => outcome,
        };
        let outcome = match (outcome, self.count_borrows().await) {
            (Ok(_), Err(failure)) => Err(failure),
            (outcome, _) => outcome,
        };
        let succeeded = outcome.is_ok();
        let (result, mut more_returns) = match outcome {
            Ok(bytes) => self.store_results(&spec, bytes).await,
            Err(failure) => (task_reply::Result::Failure(failure), Vec::new()),
        };
        let mut contained = Vec::new();
        let replied = succeeded
            && matches!(
                result,
                task_reply::Result::Value(_) | task_reply::Result::Stored(_)
            );
        if !replied && !returned.is_empty() {
            // The caller hears only of the failure: the holds end here.
            self.end_returned_holds(&spec, &returned);
        }
        if replied {
            for (index, handle) in &returned {
                match index {
                    0 => contained.push(handle.id.to_vec()),
                    i => {
                        if let Some(more) = more_returns.get_mut(*i as usize - 1) {
                            more.contained.push(handle.id.to_vec());
                        }
                    }
                }
            }
        }
        TaskReply {
            task_id: spec.task_id,
            result: Some(result),
            more_returns,
            contained,
        }
    }

    /// The return objects of a call that failed after all hold nothing.
    fn end_returned_holds(
        &self,
        spec: &TaskSpec,
        returned: &[(u32, Arc<crate::object_ref::RefHandle>)],
    ) {
        let (Ok(task), Some(core)) = (
            photon_proto::TaskId::from_slice(&spec.task_id),
            crate::worker_context::made(),
        ) else {
            return;
        };
        for (index, handle) in returned {
            core.borrows.note_held_by(
                core,
                handle.id,
                photon_proto::v1::BorrowChange::Return,
                ObjectId::for_return(task, *index),
            );
        }
    }

    /// Readies the objects referenced inside a call's return values for the
    /// caller, as for arguments (stored, marked lent), and has the head
    /// count each return object as holding them.
    async fn lend_returned(
        &self,
        spec: &TaskSpec,
        returned: &[(u32, Arc<crate::object_ref::RefHandle>)],
    ) -> std::result::Result<(), TaskFailure> {
        let task = photon_proto::TaskId::from_slice(&spec.task_id)
            .map_err(|e| self.system_failure(format!("bad task id: {e}")))?;
        let context =
            crate::worker_context::get().map_err(|e| self.system_failure(e.to_string()))?;
        for (index, handle) in returned {
            context.core.lend(handle).await.map_err(|e| {
                self.system_failure(format!(
                    "cannot pass on object {} returned inside the result: {e}",
                    handle.id
                ))
            })?;
            context.core.borrows.note_held_by(
                &context.core,
                handle.id,
                photon_proto::v1::BorrowChange::Borrow,
                ObjectId::for_return(task, *index),
            );
        }
        Ok(())
    }

    /// Stores each return of a call: the reply's result (return 0) and the
    /// others, for a call with `num_returns` > 1 (whose value is framed).
    async fn store_results(
        &self,
        spec: &TaskSpec,
        bytes: Vec<u8>,
    ) -> (task_reply::Result, Vec<ReturnObject>) {
        let task = match photon_proto::TaskId::from_slice(&spec.task_id) {
            Ok(task) => task,
            Err(e) => {
                let failure = self.failure(format!("bad task id: {e}"));
                return (task_reply::Result::Failure(failure), Vec::new());
            }
        };
        if spec.num_returns <= 1 {
            let id = ObjectId::for_return(task, 0);
            return match self.store_result(id, Bytes::from(bytes)).await {
                Ok(result) => (as_reply(result), Vec::new()),
                Err(failure) => (task_reply::Result::Failure(failure), Vec::new()),
            };
        }
        let parts = match crate::returns::split_returns(Bytes::from(bytes), spec.num_returns) {
            Ok(parts) => parts,
            Err(message) => {
                return (
                    task_reply::Result::Failure(self.failure(message)),
                    Vec::new(),
                );
            }
        };
        let mut results = Vec::with_capacity(parts.len());
        for (index, part) in (0u32..).zip(parts) {
            match self
                .store_result(ObjectId::for_return(task, index), part)
                .await
            {
                Ok(result) => results.push(result),
                Err(failure) => {
                    // The owner hears only of the failure: free what was stored.
                    for (index, result) in (0u32..).zip(&results) {
                        if let return_object::Result::Stored(_) = result {
                            Box::pin(object_io::delete(
                                &self.raylet,
                                ObjectId::for_return(task, index),
                            ))
                            .await;
                        }
                    }
                    return (task_reply::Result::Failure(failure), Vec::new());
                }
            }
        }
        let mut results = results.into_iter();
        let first = results.next().expect("num_returns > 1");
        let more = results
            .map(|result| ReturnObject {
                result: Some(result),
                contained: Vec::new(),
            })
            .collect();
        (as_reply(first), more)
    }

    async fn run(&self, spec: &TaskSpec) -> std::result::Result<Vec<u8>, TaskFailure> {
        let args = self.fetch_args(&spec.args).await?;
        let future = if spec.method.is_empty() {
            let Some(function) = registry::function(&spec.function) else {
                return Err(self.system_failure(format!(
                    "this program has no remote function {} (is the worker the driver's build?)",
                    spec.function
                )));
            };
            (function.invoke)(args)
        } else {
            let Some(actor) = self.actor.get() else {
                return Err(self.failure(format!(
                    "worker runs no actor, but was called with method {}",
                    spec.method
                )));
            };
            actor.instance.clone().call(&spec.method, args)
        };
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(message)) => Err(self.failure(message)),
            Err(panic) => {
                let mut f = self.failure(format!("panicked: {}", panic_message(&panic)));
                f.panicked = true;
                Err(f)
            }
        }
    }

    /// A small return inline; a large one into this node's store as `id`.
    async fn store_result(
        &self,
        id: ObjectId,
        bytes: Bytes,
    ) -> std::result::Result<return_object::Result, TaskFailure> {
        if bytes.len() <= INLINE_MAX {
            return Ok(return_object::Result::Value(bytes));
        }
        match Box::pin(object_io::write(&self.raylet, id, &bytes)).await {
            Ok(()) => Ok(return_object::Result::Stored(StoredObject {
                node_id: self.node_id.to_vec(),
                node_address: self.raylet_address.clone(),
                size: bytes.len() as u64,
            })),
            Err(err) => Err(self.system_failure(format!("cannot store result {id}: {err}"))),
        }
    }
}

/// A stored or inline return as the reply's result.
fn as_reply(result: return_object::Result) -> task_reply::Result {
    match result {
        return_object::Result::Value(bytes) => task_reply::Result::Value(bytes),
        return_object::Result::Stored(stored) => task_reply::Result::Stored(stored),
    }
}

struct WorkerService {
    executor: Arc<Executor>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = std::result::Result<TaskReply, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type PushTasksStream = ReplyStream;

    async fn push_tasks(
        &self,
        request: Request<Streaming<TaskSpec>>,
    ) -> std::result::Result<Response<ReplyStream>, Status> {
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::unbounded_channel();
        let executor = self.executor.clone();
        tokio::spawn(async move {
            while let Some(Ok(spec)) = inbound.next().await {
                let cancel = executor.calls.arrived(&spec.task_id);
                let concurrent = executor
                    .actor
                    .get()
                    .filter(|actor| actor.max_concurrency > 1)
                    .map(|actor| actor.calls.clone());
                match concurrent {
                    // Up to max_concurrency calls at once.
                    Some(calls) => {
                        let Ok(permit) = calls.acquire_owned().await else {
                            return;
                        };
                        let executor = executor.clone();
                        let sender = sender.clone();
                        tokio::spawn(async move {
                            let reply = executor.execute(spec, sender.clone(), cancel).await;
                            drop(permit);
                            let _ = sender.send(Ok(reply));
                        });
                    }
                    // Tasks, and actors with max_concurrency 1: one at a time, in order.
                    None => {
                        let reply = executor.clone().execute(spec, sender.clone(), cancel).await;
                        if sender.send(Ok(reply)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            receiver,
        ))))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> std::result::Result<Response<CancelTaskReply>, Status> {
        self.executor.calls.cancel(&request.into_inner().task_id);
        Ok(Response::new(CancelTaskReply {}))
    }
}
