//! Actors from the caller's side: creation through the head (which places
//! the actor), then one ordered stream of calls straight to the actor's
//! worker. A per-actor task resolves each call's arguments in call order,
//! reconnects after a restart, and fails calls with `ActorDied` when the
//! worker dies under them or the actor is dead for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::v1::{
    ActorRecord, ActorSpec, ActorState, BundleRef, ConnectActorRequest, GetActorRequest,
    TaskArg as ProtoArg, TaskSpec, task_arg, task_reply,
};
use photon_proto::{ActorId, ObjectId, WorkerId};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::clients;
use crate::context::Core;
use crate::error::{Error, Result};
use crate::object_ref::{ArgKind, ObjectRef, RefHandle, TaskArg};
use crate::objects::ObjectState;
use crate::options::{ActorOptions, MethodOptions};
use crate::returns::{CallReturns, Returns};
use crate::submitter::{cancel_on_worker, why_worker_died};

/// How often a caller polls the head while its actor is pending or restarting.
const POLL: Duration = Duration::from_millis(20);

/// What an actor's connection is asked to do.
enum Message {
    Call(Call),
    /// Cancel the call making this object, if it was sent to the worker.
    Cancel(ObjectId),
}

struct Call {
    returns: Returns,
    method: &'static str,
    /// The caller's name for the call (empty: none).
    name: String,
    retries_left: u32,
    args: Vec<TaskArg>,
    /// Set for a call sent before, being sent again after a restart: its
    /// arguments are resolved already.
    resolved: Option<Box<Sent>>,
}

/// A call as sent to the worker, with the argument references it holds.
struct Sent {
    spec: TaskSpec,
    deps: Vec<Arc<RefHandle>>,
}

struct InFlight {
    returns: Returns,
    method: &'static str,
    name: String,
    retries_left: u32,
    /// Order of sending, so calls sent again after a restart keep it.
    sequence: u64,
    /// The call as sent, kept while it has retries left (boxed: the map of
    /// calls in flight stays small for the common call without retries).
    spec: Option<Box<TaskSpec>>,
    /// Argument references held until it finishes.
    deps: Vec<Arc<RefHandle>>,
}

impl InFlight {
    fn label(&self, class: &str) -> String {
        method_label(class, self.method, &self.name)
    }
}

/// How errors name an actor call: `Class::method`, after the call's name if it has one.
fn method_label(class: &str, method: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{class}::{method}")
    } else {
        format!("{name} ({class}::{method})")
    }
}

/// The calls channel of each actor this driver talks to.
#[derive(Default)]
pub(crate) struct ActorClients {
    channels: Mutex<HashMap<ActorId, mpsc::UnboundedSender<Message>>>,
}

impl ActorClients {
    fn sender(
        &self,
        core: &Arc<Core>,
        actor: ActorId,
        class: &'static str,
    ) -> mpsc::UnboundedSender<Message> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(actor)
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::unbounded_channel();
                core.runtime
                    .spawn(drive(Arc::downgrade(core), actor, class, receiver));
                sender
            })
            .clone()
    }

    /// Asks every actor connection to cancel the call making `id` on its
    /// worker, if it sent it there (cancels are rare; actors per owner few).
    pub(crate) fn cancel(&self, id: ObjectId) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for channel in channels.values() {
            let _ = channel.send(Message::Cancel(id));
        }
    }

    /// Stops every connection.
    pub(crate) fn shutdown(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// A handle on an actor. Cheap to clone; calls from one driver run in order.
#[derive(Clone)]
pub struct ActorHandle {
    id: ActorId,
    class: &'static str,
    core: Arc<Core>,
}

impl std::fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({} {})", self.class, self.id)
    }
}

/// That a handle decoded from a value is of the class its type says (for
/// generated code).
pub fn check_actor_class(handle: &ActorHandle, class: &str) -> std::result::Result<(), String> {
    if handle.class == class {
        Ok(())
    } else {
        let why = format!("actor {} is a {}, not a {class}", handle.id, handle.class);
        Err(crate::ref_wire::refuse(why, |why| why))
    }
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }

    /// Its class, as registered.
    pub(crate) fn class(&self) -> &'static str {
        self.class
    }

    /// A handle on a known actor, calling from `core`'s process (one read
    /// from a value).
    pub(crate) fn attached(id: ActorId, class: &'static str, core: Arc<Core>) -> Self {
        Self { id, class, core }
    }

    /// Calls `method` with default options.
    pub fn call<T>(&self, method: &'static str, args: Vec<Result<TaskArg>>) -> ObjectRef<T> {
        self.call_with(method, MethodOptions::new(), args)
    }

    /// Calls `method` with `options`; `R` is one `ObjectRef` or, for a
    /// method declared with `num_returns`, a tuple of them (what the
    /// generated handle methods do).
    pub fn call_with<R: CallReturns>(
        &self,
        method: &'static str,
        options: MethodOptions,
        args: Vec<Result<TaskArg>>,
    ) -> R {
        let returns = Returns::new(self.core.next_task_id(), R::COUNT);
        let mut ids = returns.ids();
        let refs = R::from_refs(&mut || {
            ObjectRef::new(
                self.core
                    .new_call_ref(ids.next().expect("one id per return")),
            )
        });
        match args.into_iter().collect::<Result<Vec<_>>>() {
            Ok(args) => {
                let call = Call {
                    returns,
                    method,
                    name: options.name.unwrap_or_default(),
                    retries_left: options.max_retries,
                    args,
                    resolved: None,
                };
                if self
                    .core
                    .actors
                    .sender(&self.core, self.id, self.class)
                    .send(Message::Call(call))
                    .is_err()
                {
                    self.core.fail_returns(
                        returns,
                        Error::Cluster("the driver is shutting down".into()),
                    );
                }
            }
            Err(err) => self.core.fail_returns(returns, err),
        }
        refs
    }

    /// Registers the actor with the head, which places it.
    pub(crate) async fn create(
        core: Arc<Core>,
        class: &'static str,
        constructor: &'static str,
        options: ActorOptions,
        args: Vec<TaskArg>,
    ) -> Result<Self> {
        if options.detached && options.name.is_none() {
            return Err(Error::Config(format!(
                "a detached {class} needs a name (ActorOptions::name): it outlives its job, \
                 and its name is how another driver finds it, and kills it"
            )));
        }
        let id = ActorId::for_child(core.next_task_id(), 0);
        let mut constructor_args = Vec::with_capacity(args.len());
        let mut _deps = Vec::new();
        for arg in args {
            if let ArgKind::Value(_, contained) = &arg.0
                && let Some(inner) = contained.first()
            {
                return Err(Error::Config(format!(
                    "{class}'s constructor was given object reference {} inside an argument: \
                     a restarted actor would read it again after it may be freed; pass it to a \
                     method instead",
                    inner.id
                )));
            }
            constructor_args.push(resolve(&core, arg, &mut _deps).await?);
        }
        let spec = ActorSpec {
            actor_id: id.to_vec(),
            name: options.name.clone().unwrap_or_default(),
            resources: options.resources.to_set()?.to_proto(),
            max_restarts: options.max_restarts,
            program: core.program.clone(),
            class_name: class.to_string(),
            constructor: constructor.to_string(),
            constructor_args,
            max_concurrency: options.max_concurrency,
            detached: options.detached,
            env: core.worker_env.clone(),
            placement: options.bundle.map(|(group, index)| BundleRef {
                group_id: group.to_vec(),
                bundle_index: index,
            }),
            ..Default::default()
        };
        core.head
            .clone()
            .create_actor(spec)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::AlreadyExists | tonic::Code::InvalidArgument => {
                    Error::Config(status.message().to_string())
                }
                _ => Error::cluster(format!("cannot create actor {class}"), &status),
            })?;
        Ok(Self { id, class, core })
    }

    /// A handle from the head's record (a named lookup).
    pub(crate) fn from_record(
        core: Arc<Core>,
        class: &'static str,
        record: &ActorRecord,
    ) -> Result<Self> {
        let spec = record.spec.clone().unwrap_or_default();
        if spec.class_name != class {
            return Err(Error::Config(format!(
                "actor {:?} is a {}, not a {class}",
                spec.name, spec.class_name
            )));
        }
        let id = ActorId::from_slice(&spec.actor_id)
            .map_err(|e| Error::Cluster(format!("bad actor id from the head: {e}")))?;
        Ok(Self { id, class, core })
    }
}

/// An argument as sent: inline bytes, or an object id for the worker to fetch.
async fn resolve(
    core: &Arc<Core>,
    arg: TaskArg,
    deps: &mut Vec<Arc<RefHandle>>,
) -> Result<ProtoArg> {
    let kind = match arg.0 {
        ArgKind::Value(bytes, contained) => {
            for inner in contained {
                core.lend(&inner).await?;
                deps.push(inner);
            }
            task_arg::Kind::Value(bytes)
        }
        ArgKind::Ref(handle) => {
            let kind = match core.objects.wait_ready(handle.id).await {
                Some(ObjectState::Inline(bytes)) => task_arg::Kind::Value(bytes),
                Some(ObjectState::Failed(err)) => return Err(err),
                _ => task_arg::Kind::ObjectId(handle.id.to_vec()),
            };
            deps.push(handle);
            kind
        }
    };
    Ok(ProtoArg { kind: Some(kind) })
}

enum Connection {
    Open(Box<CallStream>),
    Dead(Error),
}

/// An open stream of calls to an actor's worker.
struct CallStream {
    sender: mpsc::UnboundedSender<TaskSpec>,
    replies: tonic::Streaming<photon_proto::v1::TaskReply>,
    /// A client of the worker, for cancels.
    client: clients::Worker,
    raylet: String,
    worker: WorkerId,
}

/// Waits for the actor to be alive and constructed, then opens its stream.
async fn connect(core: &Arc<Core>, actor: ActorId) -> Result<Connection> {
    loop {
        let record = core
            .head
            .clone()
            .get_actor(GetActorRequest {
                actor_id: actor.to_vec(),
                name: String::new(),
            })
            .await
            .map_err(|s| Error::cluster(format!("cannot look up actor {actor}"), &s))?
            .into_inner();
        let state = ActorState::try_from(record.state).unwrap_or(ActorState::Unspecified);
        match state {
            ActorState::Dead => {
                return Ok(Connection::Dead(Error::ActorDied {
                    actor,
                    reason: record.reason,
                }));
            }
            ActorState::Alive => {
                let raylet = core.raylet_at(&record.node_address)?;
                match raylet
                    .clone()
                    .connect_actor(ConnectActorRequest {
                        actor_id: actor.to_vec(),
                    })
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let address = reply.worker_address;
                        let worker = WorkerId::from_slice(&reply.worker_id).map_err(|e| {
                            Error::Cluster(format!("bad worker id from the raylet: {e}"))
                        })?;
                        let client = clients::worker(&address, &core.token)?;
                        let (sender, receiver) = mpsc::unbounded_channel();
                        match client
                            .clone()
                            .push_tasks(UnboundedReceiverStream::new(receiver))
                            .await
                        {
                            Ok(response) => {
                                return Ok(Connection::Open(Box::new(CallStream {
                                    sender,
                                    replies: response.into_inner(),
                                    client,
                                    raylet: record.node_address,
                                    worker,
                                })));
                            }
                            Err(_) => tokio::time::sleep(POLL).await,
                        }
                    }
                    // Its worker just died or its constructor failed: the head will say what next.
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
            _ => {
                if record.reason.starts_with("infeasible") {
                    return Ok(Connection::Dead(Error::Unschedulable {
                        what: format!("actor {actor}"),
                        why: record.reason,
                    }));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// One actor's calls, in order, across restarts.
async fn drive(
    core: std::sync::Weak<Core>,
    actor: ActorId,
    class: &'static str,
    mut calls: mpsc::UnboundedReceiver<Message>,
) {
    let mut in_flight: HashMap<Vec<u8>, InFlight> = HashMap::new();
    let mut backlog: Vec<Call> = Vec::new();
    let mut sequence = 0u64;
    loop {
        let Some(owner) = core.upgrade() else { return };
        let connection = match connect(&owner, actor).await {
            Ok(connection) => connection,
            Err(err) => Connection::Dead(err),
        };
        let (sender, mut replies, client, raylet, worker) = match connection {
            Connection::Open(stream) => {
                let CallStream {
                    sender,
                    replies,
                    client,
                    raylet,
                    worker,
                } = *stream;
                (sender, replies, client, raylet, worker)
            }
            Connection::Dead(err) => {
                // Every call from now on fails the same way.
                for call in backlog.drain(..) {
                    owner.fail_returns(call.returns, err.clone());
                }
                drop(owner);
                while let Some(message) = calls.recv().await {
                    if let Message::Call(call) = message
                        && let Some(owner) = core.upgrade()
                    {
                        owner.fail_returns(call.returns, err.clone());
                    }
                }
                return;
            }
        };
        let mut pending: std::collections::VecDeque<Call> = backlog.drain(..).collect();
        loop {
            // Calls received while disconnected go first, in order.
            let next = match pending.pop_front() {
                Some(call) => Some(call),
                None => {
                    tokio::select! {
                        message = calls.recv() => match message {
                            Some(Message::Call(call)) => Some(call),
                            Some(Message::Cancel(id)) => {
                                cancel_sent(&owner, &in_flight, &client, id);
                                None
                            }
                            None => return,
                        },
                        reply = replies.next() => {
                            match reply {
                                Some(Ok(reply)) => {
                                    complete(&owner, class, &mut in_flight, reply);
                                    None
                                }
                                _ => break,
                            }
                        }
                    }
                }
            };
            if let Some(call) = next {
                // Wait for its arguments while still reading replies: an
                // argument may be an earlier call's result on this stream.
                // Later calls queue up behind it; cancels act at once.
                let broken = {
                    let arguments = arguments_ready(&owner, &call);
                    tokio::pin!(arguments);
                    let mut open = true;
                    loop {
                        // Ready arguments first: most calls have none pending.
                        tokio::select! {
                            biased;
                            () = &mut arguments => break false,
                            reply = replies.next() => match reply {
                                Some(Ok(reply)) => complete(&owner, class, &mut in_flight, reply),
                                _ => break true,
                            },
                            message = calls.recv(), if open => match message {
                                Some(Message::Call(later)) => pending.push_back(later),
                                Some(Message::Cancel(id)) => {
                                    cancel_sent(&owner, &in_flight, &client, id);
                                }
                                None => open = false,
                            },
                        }
                    }
                };
                if broken {
                    pending.push_front(call);
                    break;
                }
                sequence += 1;
                send(&owner, class, call, sequence, &sender, &mut in_flight).await;
            }
        }
        // The stream broke: the worker died. Calls in flight with retries
        // left go again after a restart, in their order; the others fail.
        // Later ones wait for a restart (or fail if the actor is dead for good).
        let reason = why_worker_died(&owner, &raylet, worker).await.to_string();
        let mut sent: Vec<InFlight> = in_flight.drain().map(|(_, call)| call).collect();
        sent.sort_by_key(|call| call.sequence);
        for call in sent {
            if owner.fail_if_cancelled(call.returns, || call.label(class)) {
                continue;
            }
            let label = call.label(class);
            match call.spec {
                Some(spec) => backlog.push(Call {
                    returns: call.returns,
                    method: call.method,
                    name: call.name,
                    retries_left: call.retries_left - 1,
                    args: Vec::new(),
                    resolved: Some(Box::new(Sent {
                        spec: *spec,
                        deps: call.deps,
                    })),
                }),
                None => owner.fail_returns(
                    call.returns,
                    Error::ActorDied {
                        actor,
                        reason: format!("its worker died while running {label}: {reason}"),
                    },
                ),
            }
        }
        backlog.extend(pending);
    }
}

/// Waits until every reference argument of `call` has a value (or failed).
async fn arguments_ready(core: &Arc<Core>, call: &Call) {
    for arg in &call.args {
        match &arg.0 {
            ArgKind::Ref(handle) => {
                core.objects.wait_ready(handle.id).await;
            }
            // Waited for here, where replies are still read: an earlier
            // call to this actor may make them.
            ArgKind::Value(_, contained) => {
                for inner in contained {
                    core.objects.wait_ready(inner.id).await;
                }
            }
        }
    }
}

/// A cancel for the call making `id`: if this connection sent it, the
/// worker is told (one not sent yet sees the cancel before it is sent).
fn cancel_sent(
    core: &Arc<Core>,
    in_flight: &HashMap<Vec<u8>, InFlight>,
    worker: &clients::Worker,
    id: ObjectId,
) {
    let task_id = id.task_id().to_vec();
    if in_flight.contains_key(&task_id) {
        core.runtime
            .spawn(cancel_on_worker(worker.clone(), task_id));
    }
}

/// Sends `call` on the actor's stream once its arguments are resolved,
/// unless it was cancelled.
async fn send(
    core: &Arc<Core>,
    class: &str,
    call: Call,
    sequence: u64,
    sender: &mpsc::UnboundedSender<TaskSpec>,
    in_flight: &mut HashMap<Vec<u8>, InFlight>,
) {
    let sent = match call.resolved {
        Some(sent) => *sent,
        None => {
            let mut deps = Vec::new();
            let mut args = Vec::with_capacity(call.args.len());
            for arg in call.args {
                match resolve(core, arg, &mut deps).await {
                    Ok(arg) => args.push(arg),
                    Err(err) => {
                        core.fail_returns(call.returns, err);
                        return;
                    }
                }
            }
            let spec = TaskSpec {
                task_id: call.returns.primary().task_id().to_vec(),
                method: call.method.to_string(),
                args,
                num_returns: call.returns.count(),
                name: call.name.clone(),
                ..Default::default()
            };
            Sent { spec, deps }
        }
    };
    // A cancel recorded before this is seen here; one recorded after is
    // handled by this same connection once the call is in flight (it tells
    // the worker).
    if core.fail_if_cancelled(call.returns, || {
        method_label(class, call.method, &call.name)
    }) {
        return;
    }
    let Sent { spec, deps } = sent;
    // Kept only for a call that may be sent again.
    let (spec, kept) = if call.retries_left > 0 {
        (spec.clone(), Some(Box::new(spec)))
    } else {
        (spec, None)
    };
    in_flight.insert(
        spec.task_id.clone(),
        InFlight {
            returns: call.returns,
            method: call.method,
            name: call.name,
            retries_left: call.retries_left,
            sequence,
            spec: kept,
            deps,
        },
    );
    let _ = sender.send(spec);
}

fn complete(
    core: &Arc<Core>,
    class: &str,
    in_flight: &mut HashMap<Vec<u8>, InFlight>,
    reply: photon_proto::v1::TaskReply,
) {
    if let Some(task_reply::Result::Progress(progress)) = &reply.result {
        if let Some(call) = in_flight.get(&reply.task_id) {
            core.set_progress(call.returns, progress);
        }
        return;
    }
    let Some(call) = in_flight.remove(&reply.task_id) else {
        return;
    };
    if core.fail_if_cancelled(call.returns, || call.label(class)) {
        core.discard_results(call.returns, &reply);
        return;
    }
    let error = match reply.result {
        Some(task_reply::Result::Value(_) | task_reply::Result::Stored(_)) => {
            // Arguments let go first: an owner that lent one tells the head
            // before its caller sees the result.
            drop(call.deps);
            core.set_results(call.returns, reply);
            return;
        }
        // An argument was lost with its node: say so (the caller may rebuild it).
        Some(task_reply::Result::Failure(failure)) if !failure.lost_object.is_empty() => {
            match ObjectId::from_slice(&failure.lost_object) {
                Ok(object) => Error::ObjectLost {
                    object,
                    cause: failure.message,
                },
                Err(e) => Error::Cluster(format!("bad lost object id: {e}")),
            }
        }
        Some(task_reply::Result::Failure(failure)) => Error::TaskFailed {
            function: call.label(class),
            message: failure.message,
            panicked: failure.panicked,
            node: failure.node_address,
            pid: failure.pid,
        },
        Some(task_reply::Result::Progress(_)) => return,
        None => Error::Cluster(format!(
            "the worker replied to {} without a result",
            call.label(class)
        )),
    };
    core.fail_returns(call.returns, error);
}
