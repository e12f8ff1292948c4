//! The owner's object table: for every object this driver owns, where its
//! value is (inline here, or in some node's store), or why it failed, and how
//! many references are alive. Waiters are woken when a value arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use photon_proto::ObjectId;
use tokio::sync::Notify;

use crate::error::Error;
use crate::progress::CallProgress;

/// Where an object's value is.
#[derive(Debug, Clone)]
pub(crate) enum ObjectState {
    /// Its task has not finished.
    Pending,
    /// Small: the bytes are here.
    Inline(Bytes),
    /// Large: in the store of the node whose raylet is at `address`.
    Stored { address: String },
    /// Another process owns it; this one read a reference to it from inside
    /// a value (it is in the object store: lent objects always are).
    Borrowed,
    /// Its task failed for good.
    Failed(Error),
}

struct Entry {
    state: ObjectState,
    /// What the running call last reported (cleared with its result).
    progress: Option<CallProgress>,
    refs: usize,
    ready: Arc<Notify>,
    /// Made by an actor call (which cannot be force-cancelled).
    actor_call: bool,
    /// Passed inside a value to another process, which may still hold it.
    lent: bool,
    /// Objects referenced inside its value (a return value), which it holds
    /// at the head until it goes.
    contains: Vec<ObjectId>,
}

/// What the caller must clean up after the last reference went.
pub(crate) struct Freed {
    pub(crate) state: ObjectState,
    pub(crate) lent: bool,
    pub(crate) contains: Vec<ObjectId>,
}

impl Entry {
    fn new(state: ObjectState, actor_call: bool) -> Self {
        Self {
            state,
            progress: None,
            refs: 0,
            ready: Arc::new(Notify::new()),
            actor_call,
            lent: false,
            contains: Vec::new(),
        }
    }
}

/// The table.
#[derive(Default)]
pub(crate) struct ObjectTable {
    entries: Mutex<HashMap<ObjectId, Entry>>,
}

impl ObjectTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more reference, creating the entry (in state `initial`,
    /// made by an actor call or not) if needed.
    pub(crate) fn add_ref(&self, id: ObjectId, initial: ObjectState, actor_call: bool) {
        self.lock()
            .entry(id)
            .or_insert_with(|| Entry::new(initial, actor_call))
            .refs += 1;
    }

    /// Counts one more reference to an object another process owns; true
    /// when it is this process's first.
    pub(crate) fn add_borrowed(&self, id: ObjectId) -> bool {
        let mut entries = self.lock();
        let entry = entries
            .entry(id)
            .or_insert_with(|| Entry::new(ObjectState::Borrowed, false));
        entry.refs += 1;
        entry.refs == 1
    }

    /// Notes that the object's value references `contained` (held at the
    /// head in its name); false when it is not referenced any more.
    pub(crate) fn hold_contained(&self, id: ObjectId, contained: &[ObjectId]) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return false;
        };
        for inner in contained {
            if !entry.contains.contains(inner) {
                entry.contains.push(*inner);
            }
        }
        true
    }

    /// Counts one more reference if the object is referenced here already.
    pub(crate) fn add_ref_if_present(&self, id: ObjectId) -> bool {
        match self.lock().get_mut(&id) {
            Some(entry) => {
                entry.refs += 1;
                true
            }
            None => false,
        }
    }

    /// Notes that the object was passed inside a value to another process.
    pub(crate) fn mark_lent(&self, id: ObjectId) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.lent = true;
        }
    }

    /// True when an actor call makes `id`.
    pub(crate) fn is_actor_call(&self, id: ObjectId) -> bool {
        self.lock().get(&id).is_some_and(|entry| entry.actor_call)
    }

    /// Drops one reference; returns the entry's state when it was the last.
    pub(crate) fn release(&self, id: ObjectId) -> Option<Freed> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&id)?;
        entry.refs -= 1;
        if entry.refs > 0 {
            return None;
        }
        let entry = entries.remove(&id).expect("present above");
        entry.ready.notify_waiters();
        Some(Freed {
            state: entry.state,
            lent: entry.lent,
            contains: entry.contains,
        })
    }

    /// Records a value (or failure). Returns false when nobody references the
    /// object any more (the caller frees what arrived).
    pub(crate) fn set(&self, id: ObjectId, state: ObjectState) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return false;
        };
        entry.state = state;
        entry.progress = None;
        entry.ready.notify_waiters();
        true
    }

    /// Records what the call making a pending object reported.
    pub(crate) fn set_progress(&self, id: ObjectId, progress: CallProgress) {
        if let Some(entry) = self.lock().get_mut(&id)
            && matches!(entry.state, ObjectState::Pending)
        {
            entry.progress = Some(progress);
        }
    }

    /// What the call making the object last reported, while it runs.
    pub(crate) fn progress(&self, id: ObjectId) -> Option<CallProgress> {
        self.lock().get(&id).and_then(|e| e.progress)
    }

    /// Whether the object is referenced and still waits for its value.
    pub(crate) fn is_pending(&self, id: ObjectId) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|e| matches!(e.state, ObjectState::Pending))
    }

    /// The current state, if the object is referenced.
    pub(crate) fn peek(&self, id: ObjectId) -> Option<ObjectState> {
        self.lock().get(&id).map(|e| e.state.clone())
    }

    /// Waits until the object is no longer pending. `None` when it is not
    /// (or no longer) referenced.
    pub(crate) async fn wait_ready(&self, id: ObjectId) -> Option<ObjectState> {
        loop {
            let ready = {
                let entries = self.lock();
                let entry = entries.get(&id)?;
                if !matches!(entry.state, ObjectState::Pending) {
                    return Some(entry.state.clone());
                }
                entry.ready.clone()
            };
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check: the value may have arrived between the lock and enable().
            match self.peek(id) {
                Some(ObjectState::Pending) => notified.await,
                other => return other,
            }
        }
    }

    /// Ids of every object referenced now.
    pub(crate) fn ids(&self) -> Vec<ObjectId> {
        self.lock().keys().copied().collect()
    }

    /// Objects referenced now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
