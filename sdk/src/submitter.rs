//! Task submission, Ray's direct-call way: the driver leases workers from a
//! raylet for each resource shape, pushes tasks straight to them over one
//! gRPC stream per worker (many in flight), and reads replies from the same
//! stream. One event loop owns all of this state, so there are no locks on
//! the hot path. Workers that die are asked about (exit code, signal, killed
//! for memory, node gone) and their tasks retried or failed with that reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use photon_proto::v1::{
    BundleRef, ReturnWorkerLeaseRequest, TaskReply, TaskSpec, WorkerExitRequest,
    WorkerLeaseRequest, task_reply,
};
use photon_proto::{ObjectId, PlacementGroupId, WorkerId};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tracing::{debug, warn};

use crate::clients;
use crate::context::Core;
use crate::error::{Error, KillReason};
use crate::object_ref::RefHandle;
use crate::options::BundleChoice;
use crate::placement_group::bundle_raylet;
use crate::returns::Returns;

/// A leased worker with nothing to do is returned after this long.
const LEASE_IDLE: Duration = Duration::from_millis(500);
/// Lease requests in flight per resource shape.
const MAX_PENDING_LEASES: usize = 4;
/// Tasks of a shape whose service time averages below this are pipelined
/// (many in flight per worker); slower ones go one at a time per worker, so a
/// long task never holds short ones back behind it.
const PIPELINE_BELOW: Duration = Duration::from_millis(2);

/// A task waiting to run (or running).
pub(crate) struct PendingTask {
    pub(crate) returns: Returns,
    pub(crate) retries_left: u32,
    pub(crate) retry_exceptions: bool,
    pub(crate) resources: HashMap<String, i64>,
    /// The placement group bundle it runs in, if any.
    pub(crate) bundle: Option<BundleChoice>,
    pub(crate) spec: TaskSpec,
    /// Argument references held until the task finishes.
    pub(crate) deps: Vec<Arc<RefHandle>>,
}

/// How errors and logs name a task: its given name and its function, or
/// the function alone.
pub(crate) fn task_label(spec: &TaskSpec) -> String {
    if spec.name.is_empty() {
        spec.function.clone()
    } else {
        format!("{} ({})", spec.name, spec.function)
    }
}

/// Tasks that can share a lease: the same resources, in the same bundle (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    resources: BTreeMap<String, i64>,
    bundle: Option<BundleChoice>,
}

impl Shape {
    fn of(task: &PendingTask) -> Self {
        Self {
            resources: task.resources.clone().into_iter().collect(),
            bundle: task.bundle,
        }
    }
}

struct Lease {
    worker: WorkerId,
    raylet: String,
    /// The worker's own client (for cancels; tasks go on the stream).
    client: clients::Worker,
    shape: Shape,
    sender: mpsc::UnboundedSender<TaskSpec>,
    in_flight: HashMap<Vec<u8>, (PendingTask, Instant)>,
    idle_since: Instant,
    last_reply: Instant,
    /// Which grant this is (the same worker may be leased again later).
    generation: u64,
}

#[derive(Default)]
struct ShapeState {
    queue: VecDeque<PendingTask>,
    workers: Vec<WorkerId>,
    requests: usize,
    /// Moving average of how long one task takes on a worker; `None` until one finished.
    service_time: Option<Duration>,
}

impl ShapeState {
    fn depth(&self, max_in_flight: usize) -> usize {
        match self.service_time {
            Some(time) if time < PIPELINE_BELOW => max_in_flight,
            _ => 1,
        }
    }

    fn observe(&mut self, time: Duration) {
        self.service_time = Some(match self.service_time {
            Some(average) => (average * 7 + time) / 8,
            None => time,
        });
    }
}

enum Event {
    Submit(Box<PendingTask>),
    Granted {
        shape: Shape,
        raylet: String,
        worker: WorkerId,
        address: String,
    },
    LeaseFailed {
        shape: Shape,
        error: Error,
    },
    Reply {
        worker: WorkerId,
        generation: u64,
        reply: TaskReply,
    },
    StreamEnded {
        worker: WorkerId,
        generation: u64,
    },
    WorkerDied {
        cause: DeathCause,
        tasks: Vec<PendingTask>,
    },
    Cancel {
        primary: ObjectId,
        force: bool,
    },
    Tick,
    Shutdown(oneshot::Sender<()>),
}

/// Why a worker went.
pub(crate) enum DeathCause {
    /// The worker process ended.
    Worker(KillReason),
    /// Its raylet is unreachable (the node died).
    Node(String),
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Worker(reason) => write!(f, "{reason}"),
            Self::Node(why) => write!(f, "node {why}"),
        }
    }
}

/// Handle of the submission loop.
pub(crate) struct Submitter {
    events: mpsc::UnboundedSender<Event>,
    /// The loop's end of the channel, until `start` hands it over (events
    /// sent before wait in the channel).
    receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    local_raylet: String,
}

impl Submitter {
    /// A submitter for tasks leased from the raylet at `raylet`; nothing
    /// runs until [`Submitter::start`].
    pub(crate) fn new(raylet: String) -> Self {
        let (events, receiver) = mpsc::unbounded_channel();
        Self {
            events,
            receiver: std::sync::Mutex::new(Some(receiver)),
            local_raylet: raylet,
        }
    }

    /// Starts the loop on the current runtime, once `core` exists: a loop
    /// whose core cannot be reached takes it as dropped and stops, so one
    /// started while the core was being built could stop before the first
    /// task and leave every later one queued forever.
    pub(crate) fn start(&self, core: Weak<Core>) {
        let Some(receiver) = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return; // already running
        };
        let ticker = self.events.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                if ticker.send(Event::Tick).is_err() {
                    return;
                }
            }
        });
        let state = Loop {
            core,
            local_raylet: self.local_raylet.clone(),
            events: self.events.clone(),
            shapes: HashMap::new(),
            leases: HashMap::new(),
            grants: 0,
        };
        tokio::spawn(state.run(receiver));
    }

    /// Queues a task whose arguments are resolved.
    pub(crate) fn submit(&self, task: PendingTask) {
        let _ = self.events.send(Event::Submit(Box::new(task)));
    }

    /// Cancels the task whose first return is `primary` (see `Context::cancel`).
    pub(crate) fn cancel(&self, primary: ObjectId, force: bool) {
        let _ = self.events.send(Event::Cancel { primary, force });
    }

    /// Returns every lease and stops.
    pub(crate) async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.events.send(Event::Shutdown(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct Loop {
    core: Weak<Core>,
    local_raylet: String,
    events: mpsc::UnboundedSender<Event>,
    shapes: HashMap<Shape, ShapeState>,
    leases: HashMap<WorkerId, Lease>,
    grants: u64,
}

impl Loop {
    fn is_current(&self, worker: WorkerId, generation: u64) -> bool {
        self.leases
            .get(&worker)
            .is_some_and(|lease| lease.generation == generation)
    }

    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = receiver.recv().await {
            let Some(core) = self.core.upgrade() else {
                return;
            };
            match event {
                Event::Submit(task) => {
                    let task = *task;
                    if core.fail_if_cancelled(task.returns, || task_label(&task.spec)) {
                        continue;
                    }
                    let shape = Shape::of(&task);
                    self.shapes
                        .entry(shape.clone())
                        .or_default()
                        .queue
                        .push_back(task);
                    self.dispatch(&core, &shape);
                }
                Event::Granted {
                    shape,
                    raylet,
                    worker,
                    address,
                } => self.granted(&core, shape, raylet, worker, address),
                Event::LeaseFailed { shape, error } => self.lease_failed(&core, &shape, error),
                // A worker id comes back when the raylet reuses the process:
                // events of an earlier lease on it must not touch the new one.
                Event::Reply {
                    worker,
                    generation,
                    reply,
                } => {
                    if self.is_current(worker, generation) {
                        self.reply(&core, worker, reply);
                    }
                }
                Event::StreamEnded { worker, generation } => {
                    if self.is_current(worker, generation) {
                        self.stream_ended(&core, worker);
                    }
                }
                Event::WorkerDied { cause, tasks } => {
                    for task in tasks {
                        self.retry_or_fail(&core, task, &cause);
                    }
                }
                Event::Cancel { primary, force } => self.cancel(&core, primary, force),
                Event::Tick => {
                    self.return_idle(&core);
                    // Shapes whose lease requests failed try again (a backoff of one tick).
                    let waiting: Vec<Shape> = self
                        .shapes
                        .iter()
                        .filter(|(_, state)| !state.queue.is_empty() && state.requests == 0)
                        .map(|(shape, _)| shape.clone())
                        .collect();
                    for shape in waiting {
                        self.dispatch(&core, &shape);
                    }
                }
                Event::Shutdown(done) => {
                    let workers: Vec<WorkerId> = self.leases.keys().copied().collect();
                    for worker in workers {
                        self.return_lease(&core, worker, false).await;
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Sends queued tasks of `shape` to its workers, least loaded first, and
    /// asks for more workers while tasks wait.
    fn dispatch(&mut self, core: &Arc<Core>, shape: &Shape) {
        let Some(state) = self.shapes.get_mut(shape) else {
            return;
        };
        let depth = state.depth(core.max_in_flight);
        while !state.queue.is_empty() {
            let best = state
                .workers
                .iter()
                .filter_map(|w| self.leases.get(w).map(|l| (l.in_flight.len(), *w)))
                .filter(|(load, _)| *load < depth)
                .min();
            let Some((_, worker)) = best else { break };
            let task = state.queue.pop_front().expect("not empty");
            let lease = self.leases.get_mut(&worker).expect("listed");
            if lease.sender.send(task.spec.clone()).is_err() {
                state.queue.push_front(task);
                break;
            }
            lease
                .in_flight
                .insert(task.spec.task_id.clone(), (task, Instant::now()));
        }
        // More workers while tasks wait: one per `depth` queued tasks.
        let wanted = state.queue.len().div_ceil(depth);
        while state.requests < wanted.min(MAX_PENDING_LEASES) {
            state.requests += 1;
            let mut request = WorkerLeaseRequest {
                resources: shape.resources.clone().into_iter().collect(),
                program: core.program.clone(),
                env: core.worker_env.clone(),
                owner_tag: core.owner_tag(),
                ..Default::default()
            };
            let events = self.events.clone();
            let shape = shape.clone();
            let core = core.clone();
            let local = self.local_raylet.clone();
            debug!(
                ?shape,
                queued = state.queue.len(),
                requests = state.requests,
                "asking for a worker lease"
            );
            tokio::spawn(async move {
                let granted = match shape.bundle {
                    None => request_lease(&core, local, request).await,
                    Some((group, index)) => {
                        request.placement = Some(BundleRef {
                            group_id: group.to_vec(),
                            bundle_index: index,
                        });
                        request.no_spillback = true;
                        bundle_lease(&core, group, index, request).await
                    }
                };
                let event = match granted {
                    Ok((raylet, worker, address)) => Event::Granted {
                        shape,
                        raylet,
                        worker,
                        address,
                    },
                    Err(error) => Event::LeaseFailed { shape, error },
                };
                // Granted after the loop stopped (the driver shut down): give it back.
                if let Err(mpsc::error::SendError(Event::Granted { raylet, worker, .. })) =
                    events.send(event)
                {
                    return_to_raylet(&core, &raylet, worker, false).await;
                }
            });
        }
    }

    /// A lease request failed. An unschedulable shape fails its queued
    /// tasks; other failures (a raylet restarting, a refused connection)
    /// cost each queued task one retry, and the next tick asks again.
    fn lease_failed(&mut self, core: &Arc<Core>, shape: &Shape, error: Error) {
        let state = self.shapes.entry(shape.clone()).or_default();
        state.requests = state.requests.saturating_sub(1);
        debug!(?shape, %error, "lease request failed");
        if !state.workers.is_empty() || state.requests > 0 {
            return; // other workers will run the queue
        }
        let unschedulable = matches!(error, Error::Unschedulable { .. });
        if !unschedulable {
            warn!(%error, "a lease request failed; queued tasks will ask again");
        }
        let queue = std::mem::take(&mut state.queue);
        for mut task in queue {
            if unschedulable || task.retries_left == 0 {
                core.fail_returns(task.returns, error.clone());
            } else {
                task.retries_left -= 1;
                state.queue.push_back(task);
            }
        }
    }

    fn granted(
        &mut self,
        core: &Arc<Core>,
        shape: Shape,
        raylet: String,
        worker: WorkerId,
        address: String,
    ) {
        let state = self.shapes.entry(shape.clone()).or_default();
        state.requests = state.requests.saturating_sub(1);
        debug!(?shape, %worker, %raylet, queued = state.queue.len(), "lease granted");
        let client = match clients::worker(&address, &core.token) {
            Ok(client) => client,
            Err(err) => {
                warn!(%err, "cannot reach a leased worker; returning it");
                let owner = core.clone();
                tokio::spawn(async move { return_to_raylet(&owner, &raylet, worker, true).await });
                self.dispatch(core, &shape);
                return;
            }
        };
        let cancels = client.clone();
        self.grants += 1;
        let generation = self.grants;
        let (sender, receiver) = mpsc::unbounded_channel();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut client = client;
            match client
                .push_tasks(UnboundedReceiverStream::new(receiver))
                .await
            {
                Ok(response) => {
                    let mut replies = response.into_inner();
                    while let Some(Ok(reply)) = replies.next().await {
                        let reply = Event::Reply {
                            worker,
                            generation,
                            reply,
                        };
                        if events.send(reply).is_err() {
                            return;
                        }
                    }
                }
                Err(status) => debug!(%worker, error = status.message(), "worker stream failed"),
            }
            let _ = events.send(Event::StreamEnded { worker, generation });
        });
        state.workers.push(worker);
        self.leases.insert(
            worker,
            Lease {
                worker,
                raylet,
                client: cancels,
                shape: shape.clone(),
                sender,
                in_flight: HashMap::new(),
                idle_since: Instant::now(),
                last_reply: Instant::now(),
                generation,
            },
        );
        self.dispatch(core, &shape);
    }

    fn reply(&mut self, core: &Arc<Core>, worker: WorkerId, reply: TaskReply) {
        let Some(lease) = self.leases.get_mut(&worker) else {
            return;
        };
        if let Some(task_reply::Result::Progress(progress)) = &reply.result {
            if let Some((task, _)) = lease.in_flight.get(&reply.task_id) {
                core.set_progress(task.returns, progress);
            }
            return;
        }
        let Some((mut task, sent)) = lease.in_flight.remove(&reply.task_id) else {
            return;
        };
        if core.fail_if_cancelled(task.returns, || task_label(&task.spec)) {
            if lease.in_flight.is_empty() {
                lease.idle_since = Instant::now();
            }
            let shape = lease.shape.clone();
            core.discard_results(task.returns, &reply);
            self.dispatch(core, &shape);
            return;
        }
        let now = Instant::now();
        // Service time: from when the worker could start it (sent, or the
        // previous reply if it queued there) to its reply.
        let service = now - sent.max(lease.last_reply);
        lease.last_reply = now;
        if lease.in_flight.is_empty() {
            lease.idle_since = now;
        }
        let shape = lease.shape.clone();
        self.shapes
            .entry(shape.clone())
            .or_default()
            .observe(service);
        let function = task_label(&task.spec);
        match reply.result {
            Some(task_reply::Result::Value(_) | task_reply::Result::Stored(_)) => {
                // Arguments let go first: an owner that lent one tells the
                // head before its caller sees the result.
                task.deps.clear();
                core.set_results(task.returns, reply);
            }
            Some(task_reply::Result::Failure(failure)) => {
                if !failure.lost_object.is_empty()
                    && let Ok(lost) = ObjectId::from_slice(&failure.lost_object)
                {
                    // An argument is gone: rebuild it, then run the task again
                    // (which costs a retry, so a chain of losses ends).
                    if task.retries_left == 0 {
                        let error = Error::ObjectLost {
                            object: lost,
                            cause: format!(
                                "{function} needed it and has no retries left: {}",
                                failure.message
                            ),
                        };
                        core.fail_returns(task.returns, error);
                        self.dispatch(core, &shape);
                        return;
                    }
                    let mut task = task;
                    task.retries_left -= 1;
                    let events = self.events.clone();
                    let core = core.clone();
                    tokio::spawn(async move {
                        match core.rebuild(lost, failure.message.clone()).await {
                            Ok(()) => {
                                let _ = events.send(Event::Submit(Box::new(task)));
                            }
                            Err(err) => core.fail_returns(task.returns, err),
                        }
                    });
                } else {
                    let retry = (failure.system || task.retry_exceptions) && task.retries_left > 0;
                    if retry {
                        let mut task = task;
                        task.retries_left -= 1;
                        self.shapes
                            .entry(shape.clone())
                            .or_default()
                            .queue
                            .push_front(task);
                    } else {
                        let error = Error::TaskFailed {
                            function,
                            message: failure.message,
                            panicked: failure.panicked,
                            node: failure.node_address,
                            pid: failure.pid,
                        };
                        core.fail_returns(task.returns, error);
                    }
                }
            }
            // Progress was handled above.
            Some(task_reply::Result::Progress(_)) => {}
            None => core.fail_returns(
                task.returns,
                Error::Cluster(format!("the worker replied to {function} without a result")),
            ),
        }
        self.dispatch(core, &shape);
    }

    /// A worker's stream ended: find out why, then retry or fail its tasks.
    fn stream_ended(&mut self, core: &Arc<Core>, worker: WorkerId) {
        let Some(lease) = self.leases.remove(&worker) else {
            return;
        };
        if let Some(state) = self.shapes.get_mut(&lease.shape) {
            state.workers.retain(|w| *w != worker);
        }
        let tasks: Vec<PendingTask> = lease.in_flight.into_values().map(|(t, _)| t).collect();
        let events = self.events.clone();
        let owner = core.clone();
        tokio::spawn(async move {
            let cause = why_worker_died(&owner, &lease.raylet, worker).await;
            // Tell the raylet, so it takes the worker back (or knows it is gone).
            return_to_raylet(&owner, &lease.raylet, worker, true).await;
            let _ = events.send(Event::WorkerDied { cause, tasks });
        });
        self.dispatch(core, &lease.shape);
    }

    fn retry_or_fail(&mut self, core: &Arc<Core>, mut task: PendingTask, cause: &DeathCause) {
        if core.fail_if_cancelled(task.returns, || task_label(&task.spec)) {
            return;
        }
        if task.retries_left > 0 {
            task.retries_left -= 1;
            debug!(task = %task.spec.function, "retrying after worker death");
            let shape = Shape::of(&task);
            self.shapes
                .entry(shape.clone())
                .or_default()
                .queue
                .push_front(task);
            self.dispatch(core, &shape);
            return;
        }
        let function = task_label(&task.spec);
        let error = match cause {
            DeathCause::Worker(reason) => Error::WorkerKilled {
                function,
                reason: reason.clone(),
            },
            DeathCause::Node(why) => Error::NodeDied {
                node: why.split_whitespace().next().unwrap_or("").to_string(),
                function,
                reason: why.clone(),
            },
        };
        core.fail_returns(task.returns, error);
    }

    /// Cancels the task whose first return is `primary`: a queued one fails now; one on
    /// a worker is interrupted there (or its worker killed, with `force`)
    /// and fails when its reply or its worker's death comes in. One still
    /// resolving its arguments fails when it is submitted.
    fn cancel(&mut self, core: &Arc<Core>, primary: ObjectId, force: bool) {
        for state in self.shapes.values_mut() {
            if let Some(position) = state
                .queue
                .iter()
                .position(|t| t.returns.primary() == primary)
            {
                let task = state.queue.remove(position).expect("found above");
                core.take_cancel(primary);
                core.set_cancelled(task.returns, &task_label(&task.spec), false);
                return;
            }
        }
        let running = self.leases.values().find_map(|lease| {
            lease
                .in_flight
                .values()
                .find(|(task, _)| task.returns.primary() == primary)
                .map(|(task, _)| (lease, task.spec.task_id.clone()))
        });
        if let Some((lease, task_id)) = running {
            let core = core.clone();
            let (raylet, worker, client) =
                (lease.raylet.clone(), lease.worker, lease.client.clone());
            let shape = lease.shape.clone();
            if force && let Some(state) = self.shapes.get_mut(&shape) {
                // No more tasks for a worker being killed.
                state.workers.retain(|w| *w != worker);
            }
            tokio::spawn(async move {
                if force {
                    return_to_raylet(&core, &raylet, worker, true).await;
                } else {
                    cancel_on_worker(client, task_id).await;
                }
            });
            return;
        }
        // Its return count is unknown here: any return it could have.
        let returns = Returns::any_of(primary);
        if returns.ids().any(|id| core.objects.is_pending(id)) {
            // Resolving its arguments, or being rebuilt: it fails now, and
            // the cancel stays recorded so it is dropped when submitted.
            core.set_cancelled(returns, "(waiting for its arguments)", false);
        } else {
            core.take_cancel(primary); // it finished meanwhile
        }
    }

    fn return_idle(&mut self, core: &Arc<Core>) {
        let idle: Vec<WorkerId> = self
            .leases
            .values()
            .filter(|l| l.in_flight.is_empty() && l.idle_since.elapsed() >= LEASE_IDLE)
            .filter(|l| {
                self.shapes
                    .get(&l.shape)
                    .is_none_or(|state| state.queue.is_empty())
            })
            .map(|l| l.worker)
            .collect();
        for worker in idle {
            let Some(lease) = self.leases.remove(&worker) else {
                continue;
            };
            if let Some(state) = self.shapes.get_mut(&lease.shape) {
                state.workers.retain(|w| *w != worker);
            }
            let core = core.clone();
            tokio::spawn(async move {
                return_to_raylet(&core, &lease.raylet, worker, false).await;
            });
        }
    }

    async fn return_lease(&mut self, core: &Arc<Core>, worker: WorkerId, kill: bool) {
        let Some(lease) = self.leases.remove(&worker) else {
            return;
        };
        return_to_raylet(core, &lease.raylet, worker, kill).await;
    }
}

/// Asks `worker` to cancel `task_id` (best effort: a worker
/// that is gone has ended the task anyway).
pub(crate) async fn cancel_on_worker(mut worker: clients::Worker, task_id: Vec<u8>) {
    let request = photon_proto::v1::CancelTaskRequest { task_id };
    if let Err(status) = worker.cancel_task(request).await {
        debug!(%status, "cannot cancel a task on its worker");
    }
}

/// Returns a lease to the raylet that granted it (`kill`: stop the worker
/// instead of reusing it). Best effort: a dead raylet has nothing to take back.
async fn return_to_raylet(core: &Core, raylet: &str, worker: WorkerId, kill: bool) {
    if let Ok(mut client) = core.raylet_at(raylet) {
        let _ = client
            .return_worker_lease(ReturnWorkerLeaseRequest {
                worker_id: worker.to_vec(),
                kill,
            })
            .await;
    }
}

/// How often a lease request goes back to the local raylet when the node it
/// was spilled to cannot be reached, and how long it waits each time.
const UNREACHABLE_SPILLBACK_RETRIES: u32 = 10;
const UNREACHABLE_SPILLBACK_PAUSE: Duration = Duration::from_millis(300);

/// Asks the local raylet for a worker, following spillbacks.
/// Tries to lease from a bundle's node before a failure costs tasks a retry:
/// a node that died takes a moment to be declared dead, and its bundle to be
/// placed again elsewhere.
const BUNDLE_LEASE_ATTEMPTS: u32 = 20;
const BUNDLE_LEASE_PAUSE: Duration = Duration::from_millis(250);

/// A lease from the node of bundle `index` of `group` (found through the
/// head, waiting while the bundle is not placed); a failure other than
/// "unschedulable" asks the head again, so a bundle that moved is followed.
async fn bundle_lease(
    core: &Arc<Core>,
    group: PlacementGroupId,
    index: u32,
    request: WorkerLeaseRequest,
) -> Result<(String, WorkerId, String), Error> {
    let mut attempt = 0;
    loop {
        let raylet = bundle_raylet(core, group, index).await?;
        match request_lease(core, raylet, request.clone()).await {
            Err(error)
                if !matches!(error, Error::Unschedulable { .. })
                    && attempt + 1 < BUNDLE_LEASE_ATTEMPTS =>
            {
                attempt += 1;
                debug!(%group, bundle = index, %error, "a bundle's node refused a lease; asking again");
                tokio::time::sleep(BUNDLE_LEASE_PAUSE).await;
            }
            outcome => return outcome,
        }
    }
}

async fn request_lease(
    core: &Arc<Core>,
    local: String,
    mut request: WorkerLeaseRequest,
) -> Result<(String, WorkerId, String), Error> {
    let mut raylet = local.clone();
    let mut unreachable = 0;
    let mut hops = 0;
    while hops < 8 {
        let mut client = core.raylet_at(&raylet)?;
        let reply = match client.request_worker_lease(request.clone()).await {
            Ok(reply) => reply.into_inner(),
            // A node that died since the local raylet last heard from the
            // head: ask again once the head's verdict has reached it,
            // without costing the task a retry.
            Err(status)
                if raylet != local
                    && status.code() == Code::Unavailable
                    && unreachable < UNREACHABLE_SPILLBACK_RETRIES =>
            {
                debug!(%raylet, %status, "the spillback target is unreachable; asking the local raylet again");
                unreachable += 1;
                tokio::time::sleep(UNREACHABLE_SPILLBACK_PAUSE).await;
                raylet = local.clone();
                request.no_spillback = false;
                hops = 0;
                continue;
            }
            Err(status) => {
                return Err(Error::cluster(
                    format!("the raylet at {raylet} refused a lease"),
                    &status,
                ));
            }
        };
        if !reply.infeasible.is_empty() {
            return Err(Error::Unschedulable {
                what: "a task".into(),
                why: reply.infeasible,
            });
        }
        if !reply.spillback_address.is_empty() {
            raylet = reply.spillback_address;
            request.no_spillback = true;
            hops += 1;
            continue;
        }
        let worker = WorkerId::from_slice(&reply.worker_id)
            .map_err(|e| Error::Cluster(format!("bad worker id from {raylet}: {e}")))?;
        return Ok((raylet, worker, reply.worker_address));
    }
    Err(Error::Cluster(
        "a lease request was spilled back too often".into(),
    ))
}

/// Why a worker's stream ended, from its raylet (which reaps it).
pub(crate) async fn why_worker_died(
    core: &Arc<Core>,
    raylet: &str,
    worker: WorkerId,
) -> DeathCause {
    let Ok(mut client) = core.raylet_at(raylet) else {
        return DeathCause::Node(format!("{raylet} cannot be reached"));
    };
    // The raylet reaps the process a moment after its socket closes.
    for _ in 0..20 {
        match client
            .worker_exit(WorkerExitRequest {
                worker_id: worker.to_vec(),
            })
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.exited {
                    let why = format!("worker {worker} on {raylet} {}", reply.reason);
                    return DeathCause::Worker(if reply.killed_for_memory {
                        KillReason::Oom(why)
                    } else if reply.reason.contains("signal") {
                        KillReason::Signal(why)
                    } else {
                        KillReason::Exit(why)
                    });
                }
            }
            Err(status) => {
                return DeathCause::Node(format!(
                    "{raylet} (its raylet is unreachable: {})",
                    status.message()
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    DeathCause::Worker(KillReason::Exit(format!(
        "worker {worker} on {raylet} closed its connection"
    )))
}
