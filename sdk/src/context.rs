//! The driver: `photon::init` returns a [`Context`], the handle through which
//! a program submits tasks, creates actors and gets values. The driver owns
//! every object it creates (Ray's ownership model): it knows where each value
//! is, frees it when the last reference drops, and rebuilds it from lineage
//! when every copy is lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use photon_proto::v1::{
    BorrowChange, DeleteObjectRequest, GetActorRequest, GetClusterStatusRequest, GetLineageRequest,
    GetObjectLocationsRequest, JobMemoryRequest, KillActorRequest, NodeState, TaskArg as ProtoArg,
    TaskReply, TaskSpec, return_object, task_arg, task_reply,
};
use photon_proto::{JobId, NodeId, ObjectId, Quantity, TaskId};
use photon_raylet::packages::PROGRAM_PACKAGE_ENV;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Runtime;
use tonic::Code;

use crate::actor_client::{ActorClients, ActorHandle};
use crate::borrows::BorrowUpdates;
use crate::clients::{self, Head, RayletClient};
use crate::cluster::EmbeddedCluster;
use crate::codec;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lineage::Lineage;
use crate::object_io::{self, INLINE_MAX, Mapping, ObjectBytes, ReadError};
use crate::object_ref::{ArgKind, ObjectRef, RefHandle, TaskArg};
use crate::objects::{ObjectState, ObjectTable};
use crate::options::{ActorOptions, TaskOptions};
use crate::placement_group::{Bundle, PlacementGroup, PlacementStrategy};
use crate::returns::{CallReturns, Returns};
use crate::submitter::{PendingTask, Submitter, task_label};

/// How often `get` rebuilds a lost object before giving up.
const MAX_REBUILDS: usize = 3;
/// How long a blocking get spins on a pending object before it parks.
const GET_SPIN: Duration = Duration::from_micros(200);

/// A live node as the head last heard of it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Its raylet's address.
    pub address: String,
    /// Resources in total by name (`CPU`, `GPU`, `memory`, custom).
    pub total: std::collections::HashMap<String, f64>,
    /// Resources not reserved now.
    pub available: std::collections::HashMap<String, f64>,
    /// Bytes in its object store.
    pub object_store_used: u64,
    /// Its object store's capacity in bytes.
    pub object_store_capacity: u64,
    /// Bytes pinned by readers or being written in its object store.
    pub object_store_pinned: u64,
    /// Objects in its store, in memory or spilled.
    pub object_store_objects: u64,
    /// Bytes of its objects spilled to disk.
    pub object_store_spilled_bytes: u64,
    /// Lease requests waiting for its resources, by shape.
    pub pending: Vec<PendingDemand>,
}

/// How long [`Context::job_memory`] waits for each node.
pub const JOB_MEMORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The resident memory of a job's processes across the cluster at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobMemory {
    /// Summed resident bytes (shared pages count once per process).
    pub resident_bytes: u64,
    /// Processes counted: the driver, the live raylets, the job's workers.
    pub processes: usize,
}

/// Who holds an object ([`Context::object_holders`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHolders {
    /// Raylet addresses of the live nodes with a copy.
    pub nodes: Vec<String>,
    /// Processes other than its owner holding a reference, by owner tag
    /// (0: the driver).
    pub borrowers: Vec<u32>,
    /// Its owner dropped its last reference; borrowers keep it.
    pub owner_released: bool,
    /// How its owner ended, if it did.
    pub owner_ended: Option<String>,
    /// Return values (of calls whose owners still hold them) that contain
    /// a reference to it.
    pub holding_objects: Vec<ObjectId>,
}

/// Lease requests of one resource shape waiting on a node.
#[derive(Clone, Debug)]
pub struct PendingDemand {
    /// What each request needs, by resource name.
    pub resources: std::collections::HashMap<String, f64>,
    /// How many wait.
    pub count: u32,
    /// How long the oldest has waited.
    pub oldest_wait: std::time::Duration,
    /// Why they wait.
    pub reason: String,
}

/// The driver's shared state.
pub(crate) struct Core {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) token: String,
    pub(crate) head: Head,
    pub(crate) raylet: RayletClient,
    pub(crate) raylet_address: String,
    pub(crate) node_id: NodeId,
    pub(crate) objects: ObjectTable,
    pub(crate) lineage: Arc<Lineage>,
    pub(crate) submitter: Submitter,
    pub(crate) actors: ActorClients,
    pub(crate) program: String,
    /// Environment of this driver's workers: its job id (so raylets attribute
    /// their output to the job and end them with it) and, for a submitted
    /// job, its program's package (so a node that lacks the binary fetches it).
    pub(crate) worker_env: std::collections::HashMap<String, String>,
    pub(crate) max_in_flight: usize,
    root_task: TaskId,
    task_counter: AtomicU64,
    put_counter: AtomicU32,
    raylets: Mutex<HashMap<String, RayletClient>>,
    /// Reruns in progress, by their task's first return: the returns waiting on each.
    rebuilding: Mutex<HashMap<ObjectId, HashSet<ObjectId>>>,
    /// A worker's: tells its raylet while a task waits on objects.
    blocked: Option<Arc<crate::blocked::BlockedReporter>>,
    /// Results whose task (or actor call) the program cancelled, and
    /// whether by force, until the cancellation is carried out.
    cancels: Mutex<HashMap<ObjectId, bool>>,
    /// How many `cancels` holds: every call's send and reply look, and
    /// almost always find none without taking the lock.
    cancel_count: AtomicUsize,
    /// Changes to the head's count of references held outside their owner.
    pub(crate) borrows: BorrowUpdates,
    /// Held while an inline object being lent is written to the store.
    promoting: tokio::sync::Mutex<()>,
}

impl Core {
    /// A fresh task id (deterministic in job and submission order).
    pub(crate) fn next_task_id(&self) -> TaskId {
        TaskId::for_child(
            self.root_task,
            self.task_counter.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// The tag of this owner (0: a driver).
    pub(crate) fn owner_tag(&self) -> u32 {
        self.root_task.owner_tag()
    }

    /// The job this owner works for.
    pub(crate) fn job_id(&self) -> JobId {
        self.root_task.job_id()
    }

    /// A new counted reference to `id`.
    pub(crate) fn new_ref(self: &Arc<Self>, id: ObjectId, state: ObjectState) -> Arc<RefHandle> {
        self.counted_ref(id, state, false)
    }

    /// A counted reference to the result of a new actor call.
    pub(crate) fn new_call_ref(self: &Arc<Self>, id: ObjectId) -> Arc<RefHandle> {
        self.counted_ref(id, ObjectState::Pending, true)
    }

    fn counted_ref(
        self: &Arc<Self>,
        id: ObjectId,
        state: ObjectState,
        actor_call: bool,
    ) -> Arc<RefHandle> {
        self.objects.add_ref(id, state, actor_call);
        Arc::new(RefHandle {
            id,
            core: Arc::downgrade(self),
        })
    }

    /// A client of the raylet at `address` (cached).
    pub(crate) fn raylet_at(&self, address: &str) -> Result<RayletClient> {
        let mut raylets = self.raylets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = raylets.get(address) {
            return Ok(client.clone());
        }
        let client = clients::raylet(address, &self.token)?;
        raylets.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// The last reference to `id` dropped: free its copies and its lineage.
    pub(crate) fn release_object(self: &Arc<Self>, id: ObjectId) {
        let Some(freed) = self.objects.release(id) else {
            return;
        };
        // A lent return value keeps what it holds until the head frees it.
        if !freed.lent {
            self.end_holds(id, &freed.contains);
        }
        if let ObjectState::Borrowed = freed.state {
            self.borrows.note(self, id, BorrowChange::Return);
            return;
        }
        self.forget_cancel_of(id);
        self.lineage.object_freed(id);
        if freed.lent {
            // Borrowers may still hold it: the head frees it after the last.
            self.borrows.note(self, id, BorrowChange::OwnerReleased);
        } else if let ObjectState::Stored { .. } = freed.state {
            drop(self.delete_copies(id));
        }
    }

    /// A reference read from inside a value: this process's own object
    /// again, or a borrowed one, which the head counts from now until this
    /// process's last reference to it drops.
    pub(crate) fn ref_from_value(self: &Arc<Self>, id: ObjectId) -> Arc<RefHandle> {
        let mine = id.job_id() == self.job_id() && id.owner_tag() == self.owner_tag();
        // An own object this process released meanwhile (a return value
        // holding it kept it) is borrowed back, like another's.
        if mine && self.objects.add_ref_if_present(id) {
            return Arc::new(RefHandle {
                id,
                core: Arc::downgrade(self),
            });
        }
        if self.objects.add_borrowed(id) {
            self.borrows.note(self, id, BorrowChange::Borrow);
        }
        Arc::new(RefHandle {
            id,
            core: Arc::downgrade(self),
        })
    }

    /// Deletes every copy of a stored object (the primary and any fetched
    /// ones), in the background.
    pub(crate) fn delete_copies(self: &Arc<Self>, id: ObjectId) -> tokio::task::JoinHandle<()> {
        let core = self.clone();
        self.runtime.spawn(async move {
            let Ok(reply) = core
                .head
                .clone()
                .get_object_locations(GetObjectLocationsRequest {
                    object_id: id.to_vec(),
                })
                .await
            else {
                return;
            };
            for location in reply.into_inner().locations {
                if let Ok(mut raylet) = core.raylet_at(&location.address) {
                    let _ = raylet
                        .delete_object(DeleteObjectRequest {
                            object_id: id.to_vec(),
                        })
                        .await;
                }
            }
        })
    }

    /// Waits for an object's bytes, rebuilding it from lineage when every
    /// copy is gone.
    pub(crate) async fn get_bytes(
        self: &Arc<Self>,
        id: ObjectId,
        how: Mapping,
    ) -> Result<ObjectBytes> {
        let _waiting = self.waiting_if(|| self.objects.is_pending(id));
        for _ in 0..=MAX_REBUILDS {
            let state = self
                .objects
                .wait_ready(id)
                .await
                .ok_or_else(|| Error::ObjectLost {
                    object: id,
                    cause: "it is not referenced by this driver any more".into(),
                })?;
            match state {
                ObjectState::Inline(bytes) => return Ok(ObjectBytes::Inline(bytes)),
                ObjectState::Failed(err) => return Err(err),
                ObjectState::Pending => continue,
                ObjectState::Borrowed => {
                    return match object_io::read(&self.raylet, id, how).await {
                        Ok(bytes) => Ok(bytes),
                        Err(ReadError::Other(err)) => Err(err),
                        Err(ReadError::Lost(why)) => Err(self.borrowed_object_lost(id, why).await),
                    };
                }
                ObjectState::Stored { address, .. } => {
                    match object_io::read(&self.raylet, id, how).await {
                        Ok(bytes) => return Ok(bytes),
                        Err(ReadError::Other(err)) => return Err(err),
                        Err(ReadError::Lost(why)) => {
                            let why = format!("its copy on node {address} is gone ({why})");
                            let _waiting = self.waiting_if(|| true);
                            self.rebuild(id, why).await?;
                        }
                    }
                }
            }
        }
        Err(Error::ObjectLost {
            object: id,
            cause: format!("it was lost again after {MAX_REBUILDS} rebuilds"),
        })
    }

    /// Why a borrowed object cannot be read: its owner ended (the head
    /// says how), or every copy is gone, and only the owner could rebuild it.
    async fn borrowed_object_lost(&self, id: ObjectId, why: String) -> Error {
        let request = GetObjectLocationsRequest {
            object_id: id.to_vec(),
        };
        match self.head.clone().get_object_locations(request).await {
            Ok(reply) if !reply.get_ref().owner_ended.is_empty() => Error::OwnerDied {
                object: id,
                owner: match id.owner_tag() {
                    0 => "its job's driver".to_string(),
                    tag => format!("the worker with owner tag {tag}"),
                },
                reason: reply.into_inner().owner_ended,
            },
            _ => Error::ObjectLost {
                object: id,
                cause: format!(
                    "every copy is gone ({why}), and only its owner could rebuild it: this \
                     process borrowed it"
                ),
            },
        }
    }

    /// Records that the program cancelled the call making `id`.
    fn request_cancel(&self, id: ObjectId, force: bool) {
        let mut cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        cancels.insert(id, force);
        self.cancel_count.store(cancels.len(), Ordering::Release);
    }

    /// A cancel of the call that made `id` is forgotten once none of the
    /// call's returns is referenced any more (cancels are kept by the call's
    /// first return, which may go before the others).
    fn forget_cancel_of(&self, id: ObjectId) {
        if self.cancel_count.load(Ordering::Acquire) == 0 || id.is_put() {
            return;
        }
        let primary = Returns::primary_of(id);
        if Returns::any_of(primary)
            .ids()
            .all(|id| self.objects.peek(id).is_none())
        {
            self.take_cancel(primary);
        }
    }

    /// Whether the call making `id` was cancelled (and by force), forgetting it.
    pub(crate) fn take_cancel(&self, id: ObjectId) -> Option<bool> {
        if self.cancel_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        let forced = cancels.remove(&id);
        self.cancel_count.store(cancels.len(), Ordering::Release);
        forced
    }

    /// If the call making `id` was cancelled, fails it with `TaskCancelled`
    /// (naming `function()`) and says so: its outcome is in, or it was about
    /// to be sent or retried.
    pub(crate) fn fail_if_cancelled(
        &self,
        returns: Returns,
        function: impl FnOnce() -> String,
    ) -> bool {
        let Some(forced) = self.take_cancel(returns.primary()) else {
            return false;
        };
        self.set_cancelled(returns, &function(), forced);
        true
    }

    /// Fails each of `returns` with `TaskCancelled` (its call was
    /// cancelled), unless it failed so already (a task cancelled while
    /// waiting for arguments).
    pub(crate) fn set_cancelled(&self, returns: Returns, function: &str, forced: bool) {
        let how = if forced {
            " (its worker was killed)".to_string()
        } else {
            String::new()
        };
        for id in returns.ids().filter(|id| self.objects.is_pending(*id)) {
            let error = Error::TaskCancelled {
                function: function.to_string(),
                object: id,
                how: how.clone(),
            };
            self.objects.set(id, ObjectState::Failed(error));
        }
    }

    /// Records what a running call reported, on each of its returns.
    pub(crate) fn set_progress(&self, returns: Returns, progress: &photon_proto::v1::TaskProgress) {
        let progress = crate::progress::from_proto(progress);
        for id in returns.ids() {
            self.objects.set_progress(id, progress);
        }
    }

    /// Fails every return of a call that still waits for its value with
    /// `error`. A return that has one is left alone: a rebuild of one return
    /// reruns the call, and its failure must not spoil the others.
    pub(crate) fn fail_returns(&self, returns: Returns, error: Error) {
        for id in returns.ids().filter(|id| self.objects.is_pending(*id)) {
            self.objects.set(id, ObjectState::Failed(error.clone()));
        }
    }

    /// Fills a call's returns from its successful reply (return 0 in
    /// `result`, the others in `more_returns`). A stored value nobody
    /// references any more is deleted.
    pub(crate) fn set_results(self: &Arc<Self>, returns: Returns, mut reply: TaskReply) {
        if returns.count() == 1 && reply.more_returns.is_empty() {
            // The common case, without the general path's allocation.
            let id = returns.primary();
            let contained = std::mem::take(&mut reply.contained);
            let (state, stored) = match reply.result {
                Some(task_reply::Result::Value(bytes)) => (ObjectState::Inline(bytes), false),
                Some(task_reply::Result::Stored(stored)) => (
                    ObjectState::Stored {
                        address: stored.node_address,
                    },
                    true,
                ),
                _ => return,
            };
            if !self.objects.set(id, state) && stored {
                drop(self.delete_copies(id));
            }
            self.hold_contained(id, &contained);
            return;
        }
        let mut contained: Vec<Vec<Vec<u8>>> =
            std::iter::once(std::mem::take(&mut reply.contained))
                .chain(
                    reply
                        .more_returns
                        .iter_mut()
                        .map(|r| std::mem::take(&mut r.contained)),
                )
                .collect();
        let first = match reply.result {
            Some(task_reply::Result::Value(bytes)) => return_object::Result::Value(bytes),
            Some(task_reply::Result::Stored(stored)) => return_object::Result::Stored(stored),
            _ => return,
        };
        let results: Vec<_> = std::iter::once(Some(first))
            .chain(reply.more_returns.into_iter().map(|r| r.result))
            .collect();
        if results.len() != returns.count() as usize || results.iter().any(Option::is_none) {
            self.discard(returns.ids().zip(results.iter()));
            for (id, contained) in returns.ids().zip(&contained) {
                self.hold_contained(id, contained);
            }
            let error = Error::Cluster(format!(
                "a worker replied with {} of the {} returns of task {}; do the driver and the \
                 workers run the same build?",
                results.iter().flatten().count(),
                returns.count(),
                returns.primary().task_id()
            ));
            self.fail_returns(returns, error);
            return;
        }
        for ((id, result), contained) in returns
            .ids()
            .zip(results.into_iter().flatten())
            .zip(contained.iter_mut())
        {
            let contained = std::mem::take(contained);
            let (state, stored) = match result {
                return_object::Result::Value(bytes) => (ObjectState::Inline(bytes), false),
                return_object::Result::Stored(stored) => (
                    ObjectState::Stored {
                        address: stored.node_address,
                    },
                    true,
                ),
            };
            if !self.objects.set(id, state) && stored {
                drop(self.delete_copies(id));
            }
            self.hold_contained(id, &contained);
        }
    }

    /// Records that return `id` holds the objects referenced inside its
    /// value (the worker that made it told the head so); when nobody
    /// references `id` any more, that hold ends at once.
    fn hold_contained(self: &Arc<Self>, id: ObjectId, contained: &[Vec<u8>]) {
        if contained.is_empty() {
            return;
        }
        let inner: Vec<ObjectId> = contained
            .iter()
            .filter_map(|c| ObjectId::from_slice(c).ok())
            .collect();
        if !self.objects.hold_contained(id, &inner) {
            self.end_holds(id, &inner);
        }
    }

    /// Return `id` no longer holds `inner`.
    fn end_holds(self: &Arc<Self>, id: ObjectId, inner: &[ObjectId]) {
        for inner in inner {
            self.borrows
                .note_held_by(self, *inner, BorrowChange::Return, id);
        }
    }

    /// Deletes what a reply stored for a call whose results nobody takes
    /// (it was cancelled); a return that has a value (a rebuild's sibling)
    /// keeps its copies.
    pub(crate) fn discard_results(self: &Arc<Self>, returns: Returns, reply: &TaskReply) {
        let first = match &reply.result {
            Some(task_reply::Result::Stored(stored)) => {
                Some(return_object::Result::Stored(stored.clone()))
            }
            _ => None,
        };
        let results: Vec<_> = std::iter::once(first)
            .chain(reply.more_returns.iter().map(|r| r.result.clone()))
            .collect();
        self.discard(returns.ids().zip(results.iter()));
        let contained = std::iter::once(&reply.contained)
            .chain(reply.more_returns.iter().map(|r| &r.contained));
        for (id, contained) in returns.ids().zip(contained) {
            self.hold_contained(id, contained);
        }
    }

    fn discard<'a>(
        self: &Arc<Self>,
        results: impl Iterator<Item = (ObjectId, &'a Option<return_object::Result>)>,
    ) {
        for (id, result) in results {
            let unused = matches!(self.objects.peek(id), None | Some(ObjectState::Pending));
            if unused && let Some(return_object::Result::Stored(_)) = result {
                drop(self.delete_copies(id));
            }
        }
    }

    /// Marks a worker's task as waiting on objects while the guard lives
    /// (`blocked`), when `waits()` (asked only in a worker: a driver has
    /// nothing to report).
    pub(crate) fn waiting_if(
        &self,
        waits: impl FnOnce() -> bool,
    ) -> Option<crate::blocked::Waiting> {
        let reporter = self.blocked.as_ref()?;
        waits().then(|| reporter.wait())
    }

    /// True when an object can be read: held inline here, or in a live node's store.
    async fn available(&self, id: ObjectId) -> bool {
        if let Some(ObjectState::Inline(_)) = self.objects.peek(id) {
            return true;
        }
        self.head
            .clone()
            .get_object_locations(GetObjectLocationsRequest {
                object_id: id.to_vec(),
            })
            .await
            .is_ok_and(|reply| !reply.into_inner().locations.is_empty())
    }

    /// Runs the task that made `id` again (first rebuilding its lost
    /// arguments), producing the same object id. `put` objects cannot be rebuilt.
    pub(crate) fn rebuild(
        self: &Arc<Self>,
        id: ObjectId,
        why: String,
    ) -> futures::future::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if id.is_put() {
                let err = Error::ObjectLost {
                    object: id,
                    cause: format!(
                        "{why}; it was made by put, and put objects cannot be rebuilt (keep a copy or make it with a task)"
                    ),
                };
                self.objects.set(id, ObjectState::Failed(err.clone()));
                return Err(err);
            }
            // Keep the entry alive while rebuilding (the driver may not reference it).
            let _guard = self.new_ref(id, ObjectState::Pending);
            // One rerun per task: the returns of a call are rebuilt together.
            let task = Returns::primary_of(id);
            let leader = {
                let mut rebuilding = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
                let leader = !rebuilding.contains_key(&task);
                if leader || !rebuilding[&task].contains(&id) {
                    // Pending before anyone else can look, so followers wait
                    // for this rebuild's outcome, not the stale location.
                    self.objects.set(id, ObjectState::Pending);
                }
                rebuilding.entry(task).or_default().insert(id);
                leader
            };
            if !leader {
                self.objects.wait_ready(id).await;
                return Ok(());
            }
            let outcome = self.rebuild_once(id, why).await;
            let waiting = self
                .rebuilding
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task)
                .unwrap_or_default();
            // Siblings that joined this rerun after its reply came in wait
            // still: a failed rerun fails them, a good one is run again for them.
            for sibling in waiting.into_iter().filter(|s| *s != id) {
                if !self.objects.is_pending(sibling) {
                    continue;
                }
                match &outcome {
                    Err(err) => {
                        self.objects.set(sibling, ObjectState::Failed(err.clone()));
                    }
                    Ok(()) => {
                        let core = self.clone();
                        let why = format!("it joined the rebuild of {id} too late");
                        self.runtime.spawn(async move {
                            let _ = core.rebuild(sibling, why).await;
                        });
                    }
                }
            }
            if let Err(err) = &outcome {
                // Nobody may wait on it forever.
                self.objects.set(id, ObjectState::Failed(err.clone()));
            }
            outcome
        })
    }

    async fn rebuild_once(self: &Arc<Self>, id: ObjectId, why: String) -> Result<()> {
        let _ = self.lineage.flush().await;
        let record = match self
            .head
            .clone()
            .get_lineage(GetLineageRequest {
                object_id: id.to_vec(),
            })
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                let err = Error::ObjectLost {
                    object: id,
                    cause: format!("{why}; {}", status.message()),
                };
                self.objects.set(id, ObjectState::Failed(err.clone()));
                return Err(err);
            }
            Err(status) => {
                return Err(Error::cluster("cannot read lineage from the head", &status));
            }
        };
        let spec = record.task.unwrap_or_default();
        tracing::info!(object = %id, function = %spec.function, %why, "rebuilding from lineage");
        let mut deps = Vec::new();
        for arg in &spec.args {
            let Some(task_arg::Kind::ObjectId(arg_id)) = &arg.kind else {
                continue;
            };
            let arg_id = ObjectId::from_slice(arg_id)
                .map_err(|e| Error::Cluster(format!("corrupt lineage record: {e}")))?;
            // Hold the argument until the task has run.
            deps.push(self.new_ref(arg_id, ObjectState::Pending));
            if !self.available(arg_id).await {
                let why = format!("needed to rebuild {id}");
                self.rebuild(arg_id, why).await?;
            }
        }
        let max_retries = spec.max_retries;
        let retry_exceptions = spec.retry_exceptions;
        let resources = spec.resources.clone();
        // The task makes all its returns again; the others' entries (if still
        // referenced) take the new copies.
        self.submitter.submit(PendingTask {
            // A rebuild runs wherever it fits: the group may be gone.
            bundle: None,
            returns: Returns::new(id.task_id(), spec.num_returns),
            retries_left: max_retries,
            retry_exceptions,
            resources,
            spec,
            deps,
        });
        match self.objects.wait_ready(id).await {
            Some(ObjectState::Failed(err)) => Err(err),
            _ => Ok(()),
        }
    }

    /// Resolves arguments, records lineage and queues a task making
    /// `R::COUNT` objects; returns a reference to each.
    pub(crate) fn submit<R: CallReturns>(
        self: &Arc<Self>,
        function: &str,
        options: &TaskOptions,
        args: Vec<Result<TaskArg>>,
    ) -> R {
        let task_id = self.next_task_id();
        let returns = Returns::new(task_id, R::COUNT);
        let mut ids = returns.ids();
        let refs = R::from_refs(&mut || {
            ObjectRef::new(
                self.new_ref(ids.next().expect("one id per return"), ObjectState::Pending),
            )
        });
        let resources = match options.resources.to_set() {
            Ok(set) => set.to_proto(),
            Err(err) => {
                self.fail_returns(returns, err);
                return refs;
            }
        };
        let args = match args.into_iter().collect::<Result<Vec<_>>>() {
            Ok(args) => args,
            Err(err) => {
                self.fail_returns(returns, err);
                return refs;
            }
        };
        let spec = TaskSpec {
            task_id: task_id.to_vec(),
            function: function.to_string(),
            resources: resources.clone(),
            program: self.program.clone(),
            max_retries: options.max_retries,
            retry_exceptions: options.retry_exceptions,
            num_returns: returns.count(),
            name: options.name.clone().unwrap_or_default(),
            ..Default::default()
        };
        let task = PendingTask {
            bundle: options.bundle,
            returns,
            retries_left: options.max_retries,
            retry_exceptions: options.retry_exceptions,
            resources,
            spec,
            deps: Vec::new(),
        };
        self.resolve_and_submit(task, args, true);
        refs
    }

    /// Fills in argument values (waiting for pending ones) and hands the task
    /// to the submitter; a failed argument fails the task with its error.
    fn resolve_and_submit(
        self: &Arc<Self>,
        mut task: PendingTask,
        args: Vec<TaskArg>,
        lineage: bool,
    ) {
        let ready = args.iter().all(|arg| match &arg.0 {
            // Objects inside a value are lent from the store only.
            ArgKind::Value(_, contained) => contained.iter().all(|inner| {
                matches!(
                    self.objects.peek(inner.id),
                    Some(
                        ObjectState::Stored { .. } | ObjectState::Borrowed | ObjectState::Failed(_)
                    )
                )
            }),
            ArgKind::Ref(handle) => !matches!(
                self.objects.peek(handle.id),
                Some(ObjectState::Pending) | None
            ),
        });
        if ready {
            match self.resolve_args(&mut task, args) {
                Ok(()) => {
                    if lineage {
                        for id in task.returns.ids() {
                            self.lineage.record(id, &task.spec);
                        }
                    }
                    // Refs dropped while arguments were pending: their
                    // records go (recorded first, so no race); with none
                    // left, nothing wants the results.
                    let dropped: Vec<ObjectId> = task
                        .returns
                        .ids()
                        .filter(|id| self.objects.peek(*id).is_none())
                        .collect();
                    for id in &dropped {
                        self.lineage.object_freed(*id);
                    }
                    if dropped.len() == task.returns.count() as usize {
                        return;
                    }
                    self.submitter.submit(task);
                }
                Err(err) => {
                    if !self.fail_if_cancelled(task.returns, || task_label(&task.spec)) {
                        self.fail_returns(task.returns, err);
                    }
                }
            }
            return;
        }
        let core = self.clone();
        self.runtime.spawn(async move {
            for arg in &args {
                match &arg.0 {
                    ArgKind::Ref(handle) => {
                        core.objects.wait_ready(handle.id).await;
                    }
                    ArgKind::Value(_, contained) => {
                        for inner in contained {
                            if let Err(err) = core.lend(inner).await {
                                if !core.fail_if_cancelled(task.returns, || task_label(&task.spec))
                                {
                                    core.fail_returns(task.returns, err);
                                }
                                return;
                            }
                        }
                    }
                }
            }
            core.resolve_and_submit(task, args, lineage);
        });
    }

    /// Readies an object passed inside an argument for a borrower: waits
    /// for its value, stores it in this node's store when it is inline here
    /// (borrowers read it from there) and marks it lent, so that its last
    /// reference here tells the head instead of freeing it.
    pub(crate) async fn lend(self: &Arc<Self>, handle: &RefHandle) -> Result<()> {
        let id = handle.id;
        match self.objects.wait_ready(id).await {
            Some(ObjectState::Inline(_)) => {
                let _one_at_a_time = self.promoting.lock().await;
                if let Some(ObjectState::Inline(bytes)) = self.objects.peek(id) {
                    object_io::write(&self.raylet, id, &bytes).await?;
                    self.objects.set(
                        id,
                        ObjectState::Stored {
                            address: self.raylet_address.clone(),
                        },
                    );
                }
            }
            Some(ObjectState::Stored { .. } | ObjectState::Borrowed) => {}
            Some(ObjectState::Failed(err)) => return Err(err),
            Some(ObjectState::Pending) | None => {
                return Err(Error::ObjectLost {
                    object: id,
                    cause: "it was freed before the call holding it was sent".into(),
                });
            }
        }
        self.objects.mark_lent(id);
        Ok(())
    }

    fn resolve_args(&self, task: &mut PendingTask, args: Vec<TaskArg>) -> Result<()> {
        for arg in args {
            let kind = match arg.0 {
                ArgKind::Value(bytes, contained) => {
                    for inner in contained {
                        match self.objects.peek(inner.id) {
                            Some(ObjectState::Stored { .. }) => self.objects.mark_lent(inner.id),
                            Some(ObjectState::Borrowed) => {}
                            Some(ObjectState::Failed(err)) => return Err(err),
                            _ => {
                                return Err(Error::ObjectLost {
                                    object: inner.id,
                                    cause: "it was freed before the call holding it was sent"
                                        .into(),
                                });
                            }
                        }
                        task.deps.push(inner);
                    }
                    task_arg::Kind::Value(bytes)
                }
                ArgKind::Ref(handle) => {
                    let kind = match self.objects.peek(handle.id) {
                        Some(ObjectState::Inline(bytes)) => task_arg::Kind::Value(bytes),
                        Some(ObjectState::Stored { .. } | ObjectState::Borrowed) => {
                            task_arg::Kind::ObjectId(handle.id.to_vec())
                        }
                        Some(ObjectState::Failed(err)) => return Err(err),
                        _ => {
                            return Err(Error::ObjectLost {
                                object: handle.id,
                                cause: "an argument was freed before the task ran".into(),
                            });
                        }
                    };
                    task.deps.push(handle);
                    kind
                }
            };
            task.spec.args.push(ProtoArg { kind: Some(kind) });
        }
        Ok(())
    }

    /// Stores already-encoded bytes: inline here when small, else copied into
    /// the local node's shared memory.
    pub(crate) async fn put_encoded(self: &Arc<Self>, bytes: Vec<u8>) -> Result<Arc<RefHandle>> {
        let bytes = Bytes::from(bytes);
        let fill = |buffer: &mut [u8]| {
            buffer.copy_from_slice(&bytes);
            Ok(())
        };
        self.put_with(bytes.len(), || Ok(bytes.clone()), fill).await
    }

    /// Stores a value: inline here when small, else serialized straight
    /// into the local node's shared memory.
    pub(crate) async fn put_value<T: Serialize + ?Sized>(
        self: &Arc<Self>,
        value: &T,
    ) -> Result<Arc<RefHandle>> {
        let size = codec::encoded_size(value)?;
        self.put_with(
            size,
            || codec::encode(value).map(Bytes::from),
            |buffer| codec::encode_into(value, buffer),
        )
        .await
    }

    /// A new `put` object of `size` bytes: `inline` makes the bytes when they
    /// are small enough to keep here, else `fill` writes them into the local
    /// store through shared memory.
    async fn put_with(
        self: &Arc<Self>,
        size: usize,
        inline: impl FnOnce() -> Result<Bytes>,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Arc<RefHandle>> {
        let id = ObjectId::for_put(
            self.root_task,
            self.put_counter.fetch_add(1, Ordering::Relaxed),
        );
        if size <= INLINE_MAX {
            return Ok(self.new_ref(id, ObjectState::Inline(inline()?)));
        }
        object_io::write_with(&self.raylet, id, size, fill).await?;
        Ok(self.new_ref(
            id,
            ObjectState::Stored {
                address: self.raylet_address.clone(),
            },
        ))
    }
}

/// What `Context` owns: the runtime and the embedded cluster, stopped last.
struct Owned {
    core: Arc<Core>,
    runtime: Option<Runtime>,
    cluster: Option<EmbeddedCluster>,
    /// The driver's session with the head (`attach_driver`).
    session: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let core = self.core.clone();
        let mut cluster = self.cluster.take();
        // Closed first: an embedded head stops without waiting for it.
        if let Some(session) = &self.session {
            session.abort();
        }
        runtime.block_on(async move {
            core.submitter.shutdown().await;
            core.actors.shutdown();
            // Free everything this job created.
            let mut deletions = Vec::new();
            for id in core.objects.ids() {
                if let Some(ObjectState::Stored { .. }) = core.objects.peek(id) {
                    deletions.push(core.delete_copies(id));
                }
                core.lineage.object_freed(id);
            }
            let _ = core.lineage.flush().await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(deletions))
                    .await;
            if let Some(cluster) = cluster.as_mut() {
                cluster.stop().await;
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// A driver's handle on its cluster. Cheap to clone; the cluster connection
/// (and an embedded cluster) ends when the last clone drops, after freeing
/// every object the driver created.
///
/// Methods without `_async` block the calling thread: call them from plain
/// code, not from inside an async runtime (use the `_async` versions there).
/// For the same reason the last clone must be dropped outside async code.
#[derive(Clone)]
pub struct Context {
    pub(crate) core: Arc<Core>,
    _owned: Arc<Owned>,
}

/// Connects to a cluster, or starts an embedded one (see [`Config`]).
pub fn init(config: Config) -> Result<Context> {
    if crate::worker::is_worker() {
        // Going on would start a cluster whose workers run this `main`
        // again, each starting another: processes without end.
        return Err(Error::Config(
            "this process was started by a raylet as a Photon worker, but its main called \
             photon::init before photon::worker_entry: put #[photon::main] on main (or call \
             photon::worker_entry() first thing in it)"
                .into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::runtime_threads())
        .thread_name("photon-driver")
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the driver runtime: {e}")))?;
    let (core, cluster) = runtime.block_on(connect(&config))?;
    // The packages this driver's workers use stay at the head while it lives.
    let packages = [
        PROGRAM_PACKAGE_ENV,
        crate::packages::WORKING_DIR_PACKAGE_ENV,
    ]
    .iter()
    .filter_map(|name| core.worker_env.get(*name).cloned())
    .collect();
    let session = runtime.spawn(attach_driver(
        core.head.clone(),
        core.root_task.job_id(),
        packages,
    ));
    let owned = Arc::new(Owned {
        core: core.clone(),
        runtime: Some(runtime),
        cluster,
        session: Some(session),
    });
    *DRIVER.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&owned);
    Ok(Context {
        core,
        _owned: owned,
    })
}

/// The context `init` made last, while the program holds it.
static DRIVER: Mutex<std::sync::Weak<Owned>> = Mutex::new(std::sync::Weak::new());

async fn connect(config: &Config) -> Result<(Arc<Core>, Option<EmbeddedCluster>)> {
    let (head_address, token, cluster) = match config.resolved_address() {
        Some(address) => {
            let token = config.resolved_token(&address)?;
            // Without a CA found here, a process that chose its transport
            // already (a worker, the `photon` CLI) keeps it.
            if let Some(tls) = config.resolved_tls(&address)? {
                photon_proto::tls::configure(Some(tls));
            }
            (address, token, None)
        }
        None => {
            let cluster = EmbeddedCluster::start(config).await?;
            (
                cluster.head_address.clone(),
                cluster.token.clone(),
                Some(cluster),
            )
        }
    };
    let head = clients::head(&head_address, &token)?;
    let (raylet_address, node_id) = match &cluster {
        Some(cluster) => (cluster.raylet.address.clone(), cluster.raylet.node_id),
        None => local_raylet(&head, &head_address, config.raylet_address.as_deref()).await?,
    };
    let raylet = clients::raylet(&raylet_address, &token)?;
    let program = std::env::current_exe()
        .map_err(|e| Error::Config(format!("cannot find this program's path for workers: {e}")))?
        .display()
        .to_string();
    // A job submitted with `photon job submit` has its id from the head;
    // another driver asks the head for one.
    let job = match std::env::var(JOB_ID_ENV)
        .ok()
        .and_then(|id| id.parse::<JobId>().ok())
    {
        Some(job) => job,
        None => new_job_id(&head).await?,
    };
    let mut worker_env = HashMap::from([(JOB_ID_ENV.to_string(), job.to_string())]);
    if let Ok(package) = std::env::var(PROGRAM_PACKAGE_ENV) {
        worker_env.insert(PROGRAM_PACKAGE_ENV.to_string(), package);
    }
    // The workers' directory on every node: this driver's own files, else
    // the working directory of the job that started it.
    let working_dir = if config.working_dir.is_some() || !config.files.is_empty() {
        Some(ship_working_dir(config, &head_address, &token).await?)
    } else {
        std::env::var(crate::packages::WORKING_DIR_PACKAGE_ENV).ok()
    };
    if let Some(package) = working_dir {
        worker_env.insert(
            crate::packages::WORKING_DIR_PACKAGE_ENV.to_string(),
            package,
        );
    }
    worker_env.insert(PROGRAM_ENV.to_string(), program.clone());
    let core = Core::start(CoreParts {
        token,
        head,
        raylet,
        raylet_address,
        node_id,
        program,
        worker_env,
        max_in_flight: config.max_tasks_in_flight_per_worker,
        root_task: TaskId::for_driver(job),
        worker: None,
    });
    Ok((core, cluster))
}

/// What a [`Core`] is made of: where it reaches the cluster, and who it is.
pub(crate) struct CoreParts {
    pub(crate) token: String,
    pub(crate) head: Head,
    pub(crate) raylet: RayletClient,
    pub(crate) raylet_address: String,
    pub(crate) node_id: NodeId,
    pub(crate) program: String,
    pub(crate) worker_env: HashMap<String, String>,
    pub(crate) max_in_flight: Option<usize>,
    /// The root of every id this owner makes (a driver's, or a worker's).
    pub(crate) root_task: TaskId,
    /// The worker this core runs in (none in a driver).
    pub(crate) worker: Option<photon_proto::WorkerId>,
}

impl Core {
    /// A core on the current runtime, its submitter and lineage loops started.
    pub(crate) fn start(parts: CoreParts) -> Arc<Core> {
        let lineage = Lineage::new();
        let core = Arc::new(Core {
            runtime: tokio::runtime::Handle::current(),
            token: parts.token,
            head: parts.head.clone(),
            raylet: parts.raylet.clone(),
            submitter: Submitter::new(parts.raylet_address.clone()),
            raylet_address: parts.raylet_address,
            node_id: parts.node_id,
            objects: ObjectTable::default(),
            lineage: lineage.clone(),
            actors: ActorClients::default(),
            program: parts.program,
            worker_env: parts.worker_env,
            max_in_flight: parts.max_in_flight.unwrap_or(16).max(1),
            root_task: parts.root_task,
            task_counter: AtomicU64::new(1),
            put_counter: AtomicU32::new(0),
            raylets: Mutex::default(),
            rebuilding: Mutex::default(),
            cancels: Mutex::default(),
            cancel_count: AtomicUsize::new(0),
            borrows: BorrowUpdates::default(),
            promoting: tokio::sync::Mutex::default(),
            blocked: parts
                .worker
                .map(|worker| crate::blocked::BlockedReporter::start(parts.raylet, worker)),
        });
        core.submitter.start(Arc::downgrade(&core));
        tokio::spawn(lineage.run(parts.head));
        core
    }
}

/// Keeps this driver's session with the head open for as long as the
/// driver runs (the runtime's end drops it): the head ends the job's actors
/// and workers once the session is gone. Reattaches when the head restarts.
async fn attach_driver(head: Head, job: JobId, packages: Vec<String>) {
    loop {
        let request = photon_proto::v1::AttachDriverRequest {
            job_id: job.to_vec(),
            packages: packages.clone(),
        };
        if let Ok(reply) = head.clone().attach_driver(request).await {
            let mut keepalives = reply.into_inner();
            while let Ok(Some(_)) = keepalives.message().await {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Packs `Config::working_dir` and `Config::files`, uploads them to the
/// head (once: it keeps packages by content hash), and returns the hash.
async fn ship_working_dir(config: &Config, head: &str, token: &str) -> Result<String> {
    let (dir, files) = (config.working_dir.clone(), config.files.clone());
    let archive =
        tokio::task::spawn_blocking(move || crate::packages::pack(dir.as_deref(), &files))
            .await
            .expect("packing task panicked")
            .map_err(Error::Config)?;
    let mut jobs = clients::jobs(head, token)?;
    let uploaded = crate::packages::upload(&mut jobs, archive.path())
        .await
        .map_err(|e| Error::Config(format!("cannot ship the job's files to the head: {e}")))?;
    tracing::info!(
        package = %uploaded.sha256,
        bytes = uploaded.bytes,
        sent = uploaded.sent,
        "the job's files are in the head's package store"
    );
    Ok(uploaded.sha256)
}

/// A job id from the head, unique among its jobs and drivers.
async fn new_job_id(head: &clients::Head) -> Result<JobId> {
    let reply = head
        .clone()
        .new_job_id(photon_proto::v1::NewJobIdRequest {})
        .await
        .map_err(|s| Error::cluster("the head gave no job id".to_string(), &s))?;
    JobId::from_slice(&reply.into_inner().job_id)
        .map_err(|e| Error::Config(format!("the head gave an invalid job id: {e}")))
}

/// The job id of a driver the head started (and of every worker).
pub(crate) const JOB_ID_ENV: &str = "PHOTON_JOB_ID";
/// The driver's program as it named it, so workers that submit tasks of
/// their own start the same program (and share idle workers with the driver).
pub(crate) const PROGRAM_ENV: &str = "PHOTON_PROGRAM";

/// The raylet to use when joining a cluster: the configured one, else the
/// live node on this host.
async fn local_raylet(
    head: &Head,
    head_address: &str,
    configured: Option<&str>,
) -> Result<(String, NodeId)> {
    let status = head
        .clone()
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .map_err(|s| Error::cluster(format!("cannot reach the head at {head_address}"), &s))?
        .into_inner();
    let hostname = photon_raylet::hostname();
    let alive = status
        .nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Alive as i32)
        .filter_map(|n| n.info);
    let mut candidates: Vec<_> = alive
        .filter(|info| match configured {
            Some(address) => info.address == address,
            None => info.hostname == hostname,
        })
        .collect();
    candidates.sort_by(|a, b| a.address.cmp(&b.address));
    let info = candidates.into_iter().next().ok_or_else(|| {
        Error::Config(match configured {
            Some(address) => format!("no live raylet at {address} in the cluster at {head_address}"),
            None => format!(
                "no live raylet on this host ({hostname}) in the cluster at {head_address}: start one with `photon start --address {head_address}`"
            ),
        })
    })?;
    let node_id = NodeId::from_slice(&info.node_id)
        .map_err(|e| Error::Cluster(format!("the head sent a bad node id: {e}")))?;
    Ok((info.address, node_id))
}

impl Context {
    /// This process's context, for code that was not handed one: inside a
    /// remote function or actor method, the worker's own (made on first
    /// use), which owns what it creates (Ray's ownership: nested tasks,
    /// actors and objects are retried, rebuilt from lineage and freed by
    /// this worker as the driver does for its own); in a driver, the
    /// context [`init`] returned, while the program still holds it.
    pub fn current() -> Result<Context> {
        if crate::worker::is_worker() {
            return crate::worker_context::get();
        }
        let owned = DRIVER
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
            .ok_or_else(|| {
                Error::Config(
                    "there is no photon context in this process: call photon::init first".into(),
                )
            })?;
        Ok(Context {
            core: owned.core.clone(),
            _owned: owned,
        })
    }

    /// The context of a worker that owns `core` (it is never shut down:
    /// the worker process ends with its job).
    pub(crate) fn for_worker(core: Arc<Core>) -> Context {
        Context {
            core: core.clone(),
            _owned: Arc::new(Owned {
                core,
                runtime: None,
                cluster: None,
                session: None,
            }),
        }
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.core.runtime.block_on(future)
    }

    /// Spins briefly while `id` is pending before a blocking get parks the
    /// thread: a quick task's reply is often back within that time, and
    /// waking a parked thread costs about as long again on a virtual
    /// machine (round trips per second doubled in a measurement here).
    fn spin_while_pending(&self, id: ObjectId) {
        let start = Instant::now();
        while self.core.objects.is_pending(id) && start.elapsed() < GET_SPIN {
            // Yield rather than spin hard: on a busy core the thread that
            // brings the reply may be waiting for this one.
            std::thread::yield_now();
        }
    }

    /// Stores an Arrow record batch (as Arrow IPC, buffers 64-byte aligned).
    pub fn put_batch(&self, batch: &RecordBatch) -> Result<ObjectRef<RecordBatch>> {
        self.block_on(self.put_batch_async(batch))
    }

    /// [`Context::put_batch`] for async code.
    pub async fn put_batch_async(&self, batch: &RecordBatch) -> Result<ObjectRef<RecordBatch>> {
        let bytes = crate::batch::encode_batch(batch)?;
        Ok(ObjectRef::new(self.core.put_encoded(bytes).await?))
    }

    /// A record batch, zero-copy: its buffers point into the object's
    /// shared-memory mapping (pinned until the batch is dropped).
    pub fn get_batch(&self, object: &ObjectRef<RecordBatch>) -> Result<RecordBatch> {
        self.spin_while_pending(object.id());
        self.block_on(self.get_batch_async(object))
    }

    /// [`Context::get_batch`] for async code.
    pub async fn get_batch_async(&self, object: &ObjectRef<RecordBatch>) -> Result<RecordBatch> {
        let id = object.id();
        let bytes = self.core.get_bytes(id, Mapping::Lazy).await?;
        crate::batch::decode_batch(&bytes, &format!("object {id}"))
    }

    /// Submits a remote function (what `f::remote` calls).
    pub fn submit_task<T>(
        &self,
        function: &'static str,
        options: TaskOptions,
        args: Vec<Result<TaskArg>>,
    ) -> ObjectRef<T> {
        self.submit_task_returning(function, options, args)
    }

    /// Submits a task making as many objects as `R` holds refs: one
    /// `ObjectRef`, or a tuple of them for a function declared with
    /// `num_returns` (what the generated `remote` calls).
    pub fn submit_task_returning<R: CallReturns>(
        &self,
        function: &'static str,
        options: TaskOptions,
        args: Vec<Result<TaskArg>>,
    ) -> R {
        self.core.submit(function, &options, args)
    }

    /// Stores a value in the cluster: inline in this driver when small,
    /// else serialized straight into the node's shared memory (one copy).
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        self.block_on(self.put_async(value))
    }

    /// [`Context::put`] for async code (a large value is copied on the
    /// calling thread).
    pub async fn put_async<T: Serialize>(&self, value: &T) -> Result<ObjectRef<T>> {
        Ok(ObjectRef::new(self.core.put_value(value).await?))
    }

    /// The value of `object`, waiting for its task.
    pub fn get<T: DeserializeOwned>(&self, object: &ObjectRef<T>) -> Result<T> {
        self.spin_while_pending(object.id());
        self.block_on(self.get_async(object))
    }

    /// [`Context::get`] for async code.
    pub async fn get_async<T: DeserializeOwned>(&self, object: &ObjectRef<T>) -> Result<T> {
        let id = object.id();
        let bytes = self.core.get_bytes(id, Mapping::Populated).await?;
        crate::ref_wire::decode_for(&self.core, || {
            codec::decode(&bytes, format_args!("object {id}"))
        })
    }

    /// Waits until `object` has a value, without fetching it; the object's
    /// error when its task failed. (A stored value may still turn out lost
    /// when read.)
    pub async fn ready_async<T>(&self, object: &ObjectRef<T>) -> Result<()> {
        let _waiting = self
            .core
            .waiting_if(|| self.core.objects.is_pending(object.id()));
        match self.core.objects.wait_ready(object.id()).await {
            Some(ObjectState::Failed(err)) => Err(err),
            _ => Ok(()),
        }
    }

    /// [`Context::get`], giving up with [`Error::Timeout`] after `limit`.
    pub fn get_timeout<T: DeserializeOwned>(
        &self,
        object: &ObjectRef<T>,
        limit: Duration,
    ) -> Result<T> {
        self.block_on(async {
            tokio::time::timeout(limit, self.get_async(object))
                .await
                .map_err(|_| Error::Timeout(limit))?
        })
    }

    /// The values of all `objects`, in order.
    pub fn get_all<T: DeserializeOwned>(&self, objects: &[ObjectRef<T>]) -> Result<Vec<T>> {
        self.block_on(async {
            let mut values = Vec::with_capacity(objects.len());
            for object in objects {
                values.push(self.get_async(object).await?);
            }
            Ok(values)
        })
    }

    /// Waits until `num_returns` of `objects` are ready (or `timeout` passes);
    /// returns (ready, not ready), each in the input order.
    pub fn wait<T>(
        &self,
        objects: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        self.block_on(self.wait_async(objects, num_returns, timeout))
    }

    /// [`Context::wait`] for async code.
    pub async fn wait_async<T>(
        &self,
        objects: &[ObjectRef<T>],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        let wanted = num_returns.min(objects.len());
        let _waiting = self.core.waiting_if(|| {
            let pending = objects
                .iter()
                .filter(|object| self.core.objects.is_pending(object.id()))
                .count();
            objects.len() - pending < wanted
        });
        let mut ready = vec![false; objects.len()];
        let mut waiting: FuturesUnordered<_> = objects
            .iter()
            .enumerate()
            .map(|(index, object)| {
                let core = self.core.clone();
                let id = object.id();
                async move {
                    core.objects.wait_ready(id).await;
                    index
                }
            })
            .collect();
        let collect = async {
            let mut count = 0;
            while count < wanted {
                match waiting.next().await {
                    Some(index) => {
                        ready[index] = true;
                        count += 1;
                    }
                    None => break,
                }
            }
        };
        match timeout {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, collect).await;
            }
            None => collect.await,
        }
        let (done, pending): (Vec<_>, Vec<_>) = objects
            .iter()
            .zip(ready)
            .partition(|(_, is_ready)| *is_ready);
        (
            done.into_iter().map(|(o, _)| o.clone()).collect(),
            pending.into_iter().map(|(o, _)| o.clone()).collect(),
        )
    }

    /// Cancels the task or actor call that makes `object` (Ray's
    /// `ray.cancel`); `get` then fails with [`Error::TaskCancelled`].
    ///
    /// - A task still waiting (for its arguments, a worker, or its turn on
    ///   one) never runs.
    /// - A running task is interrupted: an `async` one at its next await, a
    ///   synchronous one when it checks [`crate::is_cancelled`]. With
    ///   `force` its worker process is killed instead (other tasks on that
    ///   worker are retried, as after any worker death).
    /// - An actor call that has not started never runs; one that runs is
    ///   interrupted as a task is. `force` is refused for actor calls:
    ///   it would kill the actor (use [`Context::kill`]).
    /// - A finished call is left as it is: cancelling it does nothing.
    /// - Cancelling one return of a call with several cancels the call, and
    ///   all its returns fail.
    pub fn cancel<T>(&self, object: &ObjectRef<T>, force: bool) -> Result<()> {
        let id = object.id();
        if !self.core.objects.is_pending(id) {
            return Ok(());
        }
        let actor_call = self.core.objects.is_actor_call(id);
        // A call is known by its first return: cancelling any of its returns cancels it.
        let id = Returns::primary_of(id);
        if actor_call {
            if force {
                return Err(Error::Config(format!(
                    "cannot force-cancel the actor call making {id}: that would kill its actor; cancel it without force, or kill the actor"
                )));
            }
            // Recorded first: a call not sent yet sees it before sending; the
            // actor's connection tells the worker of one it sent.
            self.core.request_cancel(id, false);
            self.core.actors.cancel(id);
            return Ok(());
        }
        self.core.request_cancel(id, force);
        self.core.submitter.cancel(id, force);
        Ok(())
    }

    /// Reserves `bundles` of resources together, on nodes chosen by
    /// `strategy` (Ray's `placement_group`): all of them or none. Returns at
    /// once; [`PlacementGroup::ready`] waits until they are reserved, and
    /// `photon status` shows a pending group's reason. Tasks and actors run
    /// in a bundle with `TaskOptions::placement_group` /
    /// `ActorOptions::placement_group`. The group lasts until
    /// [`PlacementGroup::remove`] or the end of this job.
    pub fn placement_group(
        &self,
        name: &str,
        bundles: Vec<Bundle>,
        strategy: PlacementStrategy,
    ) -> Result<PlacementGroup> {
        self.block_on(PlacementGroup::create(
            self.core.clone(),
            name,
            bundles,
            strategy,
        ))
    }

    /// Creates an actor (what the generated `Handle::new` calls).
    pub fn create_actor(
        &self,
        class: &'static str,
        constructor: &'static str,
        options: ActorOptions,
        args: Vec<Result<TaskArg>>,
    ) -> Result<ActorHandle> {
        let core = self.core.clone();
        let args = args.into_iter().collect::<Result<Vec<_>>>()?;
        self.block_on(async move {
            core.runtime
                .clone()
                .spawn(ActorHandle::create(core, class, constructor, options, args))
                .await
                .map_err(|e| Error::Cluster(e.to_string()))?
        })
    }

    /// Looks up the live actor named `name` (of class `class`).
    pub fn get_actor(&self, name: &str, class: &'static str) -> Result<ActorHandle> {
        let mut head = self.core.head.clone();
        let record = self
            .block_on(head.get_actor(GetActorRequest {
                actor_id: Vec::new(),
                name: name.to_string(),
            }))
            .map_err(|status| match status.code() {
                Code::NotFound => Error::Config(status.message().to_string()),
                _ => Error::cluster(format!("cannot look up actor {name:?}"), &status),
            })?
            .into_inner();
        ActorHandle::from_record(self.core.clone(), class, &record)
    }

    /// Kills an actor for good (no restart); its pending calls fail with `ActorDied`.
    pub fn kill(&self, actor: &ActorHandle) -> Result<()> {
        let mut head = self.core.head.clone();
        self.block_on(head.kill_actor(KillActorRequest {
            actor_id: actor.id().to_vec(),
        }))
        .map_err(|s| Error::cluster(format!("cannot kill actor {}", actor.id()), &s))?;
        Ok(())
    }

    /// The live nodes, as of their latest heartbeats (every 500 ms).
    pub fn cluster_nodes(&self) -> Result<Vec<NodeView>> {
        let mut head = self.core.head.clone();
        let status = self
            .block_on(head.get_cluster_status(GetClusterStatusRequest {}))
            .map_err(|s| Error::cluster("cannot read the cluster status", &s))?
            .into_inner();
        let amounts = |map: &std::collections::HashMap<String, i64>| {
            map.iter()
                .map(|(name, &units)| (name.clone(), Quantity::from_units(units).as_f64()))
                .collect()
        };
        Ok(status
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive as i32)
            .filter_map(|n| {
                let info = n.info.as_ref()?;
                let store = n.store.unwrap_or_default();
                Some(NodeView {
                    address: info.address.clone(),
                    total: amounts(&info.total),
                    available: amounts(&n.available),
                    object_store_used: n.object_store_used,
                    object_store_capacity: info.object_store_capacity,
                    object_store_pinned: store.pinned,
                    object_store_objects: store.objects,
                    object_store_spilled_bytes: store.spilled_bytes,
                    pending: n
                        .pending
                        .iter()
                        .map(|d| PendingDemand {
                            resources: amounts(&d.resources),
                            count: d.count,
                            oldest_wait: std::time::Duration::from_millis(d.oldest_wait_ms),
                            reason: d.reason.clone(),
                        })
                        .collect(),
                })
            })
            .collect())
    }

    /// Who holds `object`, as the head knows: the nodes with a copy, the
    /// processes other than its owner holding a reference (borrowers, by
    /// owner tag; 0 is the driver), whether its owner released it, and how
    /// its owner ended if it did.
    pub fn object_holders(&self, object: ObjectId) -> Result<ObjectHolders> {
        let request = GetObjectLocationsRequest {
            object_id: object.to_vec(),
        };
        let reply = self
            .block_on(self.core.head.clone().get_object_locations(request))
            .map_err(|s| Error::cluster(format!("cannot look up object {object}"), &s))?
            .into_inner();
        Ok(ObjectHolders {
            nodes: reply.locations.into_iter().map(|l| l.address).collect(),
            borrowers: reply.borrowers,
            owner_released: reply.owner_released,
            owner_ended: (!reply.owner_ended.is_empty()).then_some(reply.owner_ended),
            holding_objects: reply
                .holding_objects
                .iter()
                .filter_map(|id| ObjectId::from_slice(id).ok())
                .collect(),
        })
    }

    /// Bytes held in the object stores of all live nodes (as of their latest
    /// heartbeats, which come every 500 ms).
    pub fn object_store_used(&self) -> Result<u64> {
        Ok(self
            .cluster_nodes()?
            .iter()
            .map(|n| n.object_store_used)
            .sum())
    }

    /// The resident memory of this job's processes now: this driver, every
    /// live node's raylet, and the job's workers on every node (a raylet
    /// embedded in this process counts once). A node that does not answer
    /// within [`JOB_MEMORY_TIMEOUT`] is left out.
    pub fn job_memory(&self) -> Result<JobMemory> {
        let nodes = self.cluster_nodes()?;
        let job = self.core.root_task.job_id().to_vec();
        let core = self.core.clone();
        self.block_on(async move {
            let asks = nodes.iter().map(|node| {
                let request = JobMemoryRequest {
                    job_id: job.clone(),
                };
                let address = node.address.clone();
                let client = core.raylet_at(&address);
                async move {
                    let mut client = client.ok()?;
                    let ask = client.job_memory(request);
                    let reply = tokio::time::timeout(JOB_MEMORY_TIMEOUT, ask)
                        .await
                        .ok()?
                        .ok()?;
                    Some((address, reply.into_inner()))
                }
            });
            let mut processes = std::collections::HashMap::new();
            let me = std::process::id();
            processes.insert(
                (core.raylet_address.clone(), me),
                photon_raylet::procfs::resident_bytes(me).unwrap_or(0),
            );
            for (address, reply) in futures::future::join_all(asks).await.into_iter().flatten() {
                for process in reply.raylet.into_iter().chain(reply.workers) {
                    processes.insert((address.clone(), process.pid), process.resident_bytes);
                }
            }
            Ok(JobMemory {
                resident_bytes: processes.values().sum(),
                processes: processes.len(),
            })
        })
    }

    /// What the call making `object` last reported with
    /// [`TaskProgress`](crate::TaskProgress), while it runs: `None` before
    /// its first report and once its result (or failure) is in.
    pub fn progress<T>(&self, object: &ObjectRef<T>) -> Option<crate::CallProgress> {
        self.core.objects.progress(object.id())
    }

    /// Objects this driver references now.
    pub fn object_count(&self) -> usize {
        self.core.objects.len()
    }

    /// Lineage records this driver keeps, and the head's total after
    /// sending everything pending.
    pub fn lineage_records(&self) -> Result<(usize, u64)> {
        let local = self.core.lineage.len();
        let head = self.block_on(self.core.lineage.flush())?;
        Ok((local, head))
    }

    /// The node this driver uses.
    pub fn node_id(&self) -> NodeId {
        self.core.node_id
    }

    /// The raylet (node) this driver uses.
    pub fn raylet_address(&self) -> &str {
        &self.core.raylet_address
    }

    /// The runtime behind this context, for running async code from sync code.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.core.runtime
    }
}
