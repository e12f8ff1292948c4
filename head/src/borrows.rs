//! Borrowers (Ray's borrowed references): processes other than an object's
//! owner that read a reference to it from inside a value. The owner tells
//! the head when its last reference to an object it lent drops, instead of
//! freeing the object; each borrower tells the head when it starts holding
//! one and when its last one drops. The object is freed (every copy) once
//! its owner released it and no borrower is left. A borrower that ends
//! returns what it held; an owner that ends takes its objects with it, and
//! the head remembers how it ended, for its borrowers' `OwnerDied` errors.
//!
//! The table is in the head's memory: a restarted head forgets it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_proto::v1::{BorrowChange, BorrowUpdate, DeleteObjectRequest, NodeState};
use photon_proto::{JobId, ObjectId};
use tonic::Status;
use tracing::warn;

use crate::service::HeadState;

/// Objects lent inside values, and how owners that ended did.
#[derive(Default)]
pub(crate) struct Borrows {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    lent: HashMap<ObjectId, Lent>,
    /// Owners (job, tag) that ended, and how.
    ended_owners: HashMap<(JobId, u32), String>,
}

#[derive(Default)]
struct Lent {
    /// Owner tags of the processes holding a reference (0: the driver).
    borrowers: HashSet<u32>,
    /// The owner's last reference dropped.
    owner_released: bool,
}

/// Who holds an object besides its owner.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sharing {
    pub(crate) borrowers: Vec<u32>,
    pub(crate) owner_released: bool,
    /// How its owner ended, if it did.
    pub(crate) owner_ended: Option<String>,
}

impl Borrows {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the changes process `sender` of `job` sent, in order;
    /// returns the objects that nobody holds any more.
    pub(crate) fn apply(
        &self,
        job: JobId,
        sender: u32,
        updates: &[BorrowUpdate],
    ) -> Result<Vec<ObjectId>, Status> {
        let mut parsed = Vec::with_capacity(updates.len());
        for update in updates {
            let object = ObjectId::from_slice(&update.object_id)?;
            if object.job_id() != job {
                return Err(Status::invalid_argument(format!(
                    "object {object} is not job {job}'s: a process counts only its job's references"
                )));
            }
            let change = BorrowChange::try_from(update.change)
                .ok()
                .filter(|c| *c != BorrowChange::Unspecified)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown change {} to object {object}'s borrowers",
                        update.change
                    ))
                })?;
            parsed.push((object, change));
        }
        let mut inner = self.lock();
        let mut free = Vec::new();
        for (object, change) in parsed {
            match change {
                BorrowChange::Borrow => {
                    // An object whose owner ended is gone already.
                    if !inner.ended_owners.contains_key(&(job, object.owner_tag())) {
                        inner
                            .lent
                            .entry(object)
                            .or_default()
                            .borrowers
                            .insert(sender);
                    }
                }
                BorrowChange::Return => {
                    if let Some(lent) = inner.lent.get_mut(&object) {
                        lent.borrowers.remove(&sender);
                        if lent.owner_released && lent.borrowers.is_empty() {
                            inner.lent.remove(&object);
                            free.push(object);
                        }
                    }
                }
                BorrowChange::OwnerReleased => match inner.lent.get_mut(&object) {
                    Some(lent) if !lent.borrowers.is_empty() => lent.owner_released = true,
                    _ => {
                        inner.lent.remove(&object);
                        free.push(object);
                    }
                },
                BorrowChange::Unspecified => unreachable!("refused above"),
            }
        }
        Ok(free)
    }

    /// Owner `tag` of `job` ended (`how`): its objects went with it, and
    /// what it borrowed is returned; returns the objects nobody holds now.
    pub(crate) fn owner_ended(&self, job: JobId, tag: u32, how: &str) -> Vec<ObjectId> {
        let mut inner = self.lock();
        inner.ended_owners.insert((job, tag), how.to_string());
        let mut free = Vec::new();
        inner.lent.retain(|object, lent| {
            if object.job_id() != job {
                return true;
            }
            if object.owner_tag() == tag {
                return false;
            }
            lent.borrowers.remove(&tag);
            let unheld = lent.owner_released && lent.borrowers.is_empty();
            if unheld {
                free.push(*object);
            }
            !unheld
        });
        free
    }

    /// The job ended: everything of it went.
    pub(crate) fn forget_job(&self, job: JobId) {
        let mut inner = self.lock();
        inner.lent.retain(|object, _| object.job_id() != job);
        inner.ended_owners.retain(|(of, _), _| *of != job);
    }

    /// Who holds `object` besides its owner.
    pub(crate) fn sharing(&self, object: ObjectId) -> Sharing {
        let inner = self.lock();
        let mut sharing = Sharing {
            owner_ended: inner
                .ended_owners
                .get(&(object.job_id(), object.owner_tag()))
                .cloned(),
            ..Sharing::default()
        };
        if let Some(lent) = inner.lent.get(&object) {
            sharing.borrowers = lent.borrowers.iter().copied().collect();
            sharing.borrowers.sort_unstable();
            sharing.owner_released = lent.owner_released;
        }
        sharing
    }
}

impl HeadState {
    /// Deletes every copy of `objects` on the live nodes holding one.
    pub(crate) async fn free_everywhere(&self, objects: &[ObjectId]) {
        let alive: HashMap<photon_proto::NodeId, String> = self
            .nodes
            .snapshot()
            .into_iter()
            .filter(|r| r.state == NodeState::Alive as i32)
            .filter_map(|r| {
                let info = r.info?;
                Some((
                    photon_proto::NodeId::from_slice(&info.node_id).ok()?,
                    info.address,
                ))
            })
            .collect();
        for object in objects {
            for node in self.objects.holders(*object) {
                let Some(address) = alive.get(&node) else {
                    continue;
                };
                let Ok(mut raylet) = self.raylet(address) else {
                    continue;
                };
                let request = DeleteObjectRequest {
                    object_id: object.to_vec(),
                };
                if let Err(status) = raylet.delete_object(request).await {
                    warn!(%object, %address, error = status.message(), "cannot free an object its owner and borrowers released");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use photon_proto::TaskId;

    fn update(object: ObjectId, change: BorrowChange) -> BorrowUpdate {
        BorrowUpdate {
            object_id: object.to_vec(),
            change: change as i32,
        }
    }

    #[test]
    fn an_object_goes_with_the_last_of_its_owner_and_borrowers() {
        let job = JobId::from_bytes([0, 0, 0, 7]);
        let object = ObjectId::for_return(TaskId::for_child(TaskId::for_owner(job, 5), 1), 0);
        let borrows = Borrows::default();
        let borrow = [update(object, BorrowChange::Borrow)];
        assert!(borrows.apply(job, 11, &borrow).unwrap().is_empty());
        assert!(borrows.apply(job, 12, &borrow).unwrap().is_empty());
        let released = [update(object, BorrowChange::OwnerReleased)];
        assert!(borrows.apply(job, 5, &released).unwrap().is_empty());
        assert_eq!(
            borrows.sharing(object),
            Sharing {
                borrowers: vec![11, 12],
                owner_released: true,
                owner_ended: None
            }
        );
        let returned = [update(object, BorrowChange::Return)];
        assert!(borrows.apply(job, 11, &returned).unwrap().is_empty());
        // The last borrower ends without returning it.
        assert_eq!(borrows.owner_ended(job, 12, "killed"), vec![object]);
        assert_eq!(borrows.sharing(object).borrowers, Vec::<u32>::new());
        // Released with no borrower: freed at once.
        assert_eq!(borrows.apply(job, 5, &released).unwrap(), vec![object]);
        // Another job's object is refused, naming it.
        let other = JobId::from_bytes([0, 0, 0, 8]);
        let error = borrows.apply(other, 0, &borrow).unwrap_err();
        assert!(error.message().contains(&object.to_string()), "{error:?}");
    }
}
