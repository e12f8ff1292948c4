//! The owner's side of lineage: every submitted task's spec goes to the
//! head's lineage table (batched, in the background), and comes out again
//! when its object is freed and no live object's lineage needs it. A record
//! needed by another record stays: rebuilding `c` may need to rebuild `b`,
//! whose reference was dropped long ago.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use photon_proto::ObjectId;
use photon_proto::v1::{LineageRecord, LineageUpdate, TaskSpec, task_arg};
use tokio::sync::{Notify, oneshot};
use tracing::warn;

use crate::clients::Head;
use crate::error::{Error, Result};

/// How long records wait to be batched.
const FLUSH_PERIOD: Duration = Duration::from_millis(5);

struct Node {
    /// The object is still referenced by the driver.
    live: bool,
    /// Records of other objects whose tasks take this object as an argument.
    dependents: usize,
    /// This object's task's object arguments.
    args: Vec<ObjectId>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<ObjectId, Node>,
    add: Vec<LineageRecord>,
    remove: Vec<ObjectId>,
    flushed: Vec<oneshot::Sender<Result<u64>>>,
}

/// Lineage records of this owner.
pub(crate) struct Lineage {
    state: Mutex<State>,
    wake: Notify,
}

impl Lineage {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `object` is made by `task`.
    pub(crate) fn record(&self, object: ObjectId, task: &TaskSpec) {
        let args: Vec<ObjectId> = task
            .args
            .iter()
            .filter_map(|arg| match &arg.kind {
                Some(task_arg::Kind::ObjectId(id)) => ObjectId::from_slice(id).ok(),
                _ => None,
            })
            .collect();
        let mut state = self.lock();
        for arg in &args {
            if let Some(node) = state.nodes.get_mut(arg) {
                node.dependents += 1;
            }
        }
        if let Some(previous) = state.nodes.insert(
            object,
            Node {
                live: true,
                dependents: 0,
                args,
            },
        ) {
            // Re-recorded (a rebuild): keep who depends on it.
            state.nodes.get_mut(&object).expect("inserted").dependents = previous.dependents;
        }
        state.add.push(LineageRecord {
            object_id: object.to_vec(),
            task: Some(task.clone()),
        });
    }

    /// The driver dropped its last reference to `object`.
    pub(crate) fn object_freed(&self, object: ObjectId) {
        let mut state = self.lock();
        let Some(node) = state.nodes.get_mut(&object) else {
            return;
        };
        node.live = false;
        let mut candidates = vec![object];
        while let Some(id) = candidates.pop() {
            let removable = state
                .nodes
                .get(&id)
                .is_some_and(|n| !n.live && n.dependents == 0);
            if !removable {
                continue;
            }
            let node = state.nodes.remove(&id).expect("checked");
            state.remove.push(id);
            for arg in node.args {
                if let Some(parent) = state.nodes.get_mut(&arg) {
                    parent.dependents -= 1;
                    candidates.push(arg);
                }
            }
        }
    }

    /// Records this owner keeps (alive or needed by a live one).
    pub(crate) fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Sends everything pending now; returns the head's record count.
    pub(crate) async fn flush(&self) -> Result<u64> {
        let (sender, receiver) = oneshot::channel();
        self.lock().flushed.push(sender);
        self.wake.notify_one();
        receiver
            .await
            .map_err(|_| Error::Cluster("the lineage sender stopped".into()))?
    }

    /// Sends batches to the head until the owner goes away.
    pub(crate) async fn run(self: Arc<Self>, mut head: Head) {
        loop {
            let _ = tokio::time::timeout(FLUSH_PERIOD, self.wake.notified()).await;
            let (add, remove, waiters) = {
                let mut state = self.lock();
                (
                    std::mem::take(&mut state.add),
                    std::mem::take(&mut state.remove),
                    std::mem::take(&mut state.flushed),
                )
            };
            if add.is_empty() && remove.is_empty() && waiters.is_empty() {
                if Arc::strong_count(&self) == 1 {
                    return;
                }
                continue;
            }
            let update = LineageUpdate {
                add,
                remove: remove.iter().map(|id| id.to_vec()).collect(),
            };
            let outcome = head
                .update_lineage(update)
                .await
                .map(|reply| reply.into_inner().records)
                .map_err(|status| Error::cluster("cannot record lineage at the head", &status));
            if let Err(err) = &outcome {
                warn!(%err, "lineage batch lost; these objects cannot be rebuilt if lost");
            }
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }
}
