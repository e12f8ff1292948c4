//! Borrowers (Ray's borrowed references): processes other than an object's
//! owner that read a reference to it from inside a value, and return values
//! that contain one. The owner tells the head when its last reference to an
//! object it lent drops, instead of freeing the object; each borrower tells
//! the head when it starts holding one and when its last one drops, and a
//! worker that returns a value containing a reference says that the return
//! object holds it, which the return's owner ends when it frees the return.
//! The object is freed (every copy) once its owner released it and no
//! borrower is left; freeing an object ends what it held. A borrower that
//! ends returns what it held; an owner that ends takes its objects with it
//! (and what they held), and the head remembers how it ended, for its
//! borrowers' `OwnerDied` errors.
//!
//! The table is in the head's memory: a restarted head forgets it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_proto::v1::{BorrowChange, BorrowUpdate, DeleteObjectRequest};
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

/// What holds a reference to a lent object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Holder {
    /// A process of the object's job, by owner tag (0: the driver).
    Process(u32),
    /// A return value containing it.
    Object(ObjectId),
}

#[derive(Default)]
struct Lent {
    borrowers: HashSet<Holder>,
    /// The owner's last reference dropped.
    owner_released: bool,
}

/// What an owner's end did to the objects lent inside values.
#[derive(Debug)]
pub(crate) struct OwnerEnded {
    /// Objects nobody holds now (it was their last borrower).
    pub(crate) free: Vec<ObjectId>,
    /// Its objects that outlive it: released by it, and still borrowed.
    pub(crate) adopted: HashSet<ObjectId>,
}

/// Who holds an object besides its owner.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sharing {
    /// Processes, by owner tag.
    pub(crate) borrowers: Vec<u32>,
    /// Return values containing it.
    pub(crate) holding_objects: Vec<ObjectId>,
    pub(crate) owner_released: bool,
    /// How its owner ended, if it did.
    pub(crate) owner_ended: Option<String>,
}

impl Inner {
    /// `holder` no longer holds `object`; frees it if nothing else does.
    fn release(&mut self, object: ObjectId, holder: Holder, free: &mut Vec<ObjectId>) {
        if let Some(lent) = self.lent.get_mut(&object) {
            lent.borrowers.remove(&holder);
            if lent.owner_released && lent.borrowers.is_empty() {
                self.free(object, free);
            }
        }
    }

    /// Frees `object`, and what it held (in turn).
    fn free(&mut self, object: ObjectId, free: &mut Vec<ObjectId>) {
        self.lent.remove(&object);
        free.push(object);
        let held: Vec<ObjectId> = self
            .lent
            .iter()
            .filter(|(_, lent)| lent.borrowers.contains(&Holder::Object(object)))
            .map(|(held, _)| *held)
            .collect();
        for held in held {
            self.release(held, Holder::Object(object), free);
        }
    }
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
            let holder = if update.holder_object.is_empty() {
                Holder::Process(sender)
            } else {
                Holder::Object(ObjectId::from_slice(&update.holder_object)?)
            };
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
            parsed.push((object, holder, change));
        }
        let mut inner = self.lock();
        let mut free = Vec::new();
        for (object, holder, change) in parsed {
            match change {
                // A process that ended (its late updates still arriving)
                // holds nothing.
                BorrowChange::Borrow
                    if holder == Holder::Process(sender)
                        && inner.ended_owners.contains_key(&(job, sender)) => {}
                BorrowChange::Borrow => {
                    // An object whose owner ended is gone already, unless
                    // it outlived its owner.
                    if let Some(lent) = inner.lent.get_mut(&object) {
                        lent.borrowers.insert(holder);
                    } else if !inner.ended_owners.contains_key(&(job, object.owner_tag())) {
                        inner
                            .lent
                            .entry(object)
                            .or_default()
                            .borrowers
                            .insert(holder);
                    }
                }
                BorrowChange::Return => inner.release(object, holder, &mut free),
                BorrowChange::OwnerReleased => match inner.lent.get_mut(&object) {
                    Some(lent) if !lent.borrowers.is_empty() => lent.owner_released = true,
                    _ => inner.free(object, &mut free),
                },
                BorrowChange::Unspecified => unreachable!("refused above"),
            }
        }
        Ok(free)
    }

    /// Owner `tag` of `job` ended (`how`): what it borrowed is returned, and
    /// its objects go with it (and what they held) but those it had
    /// released and borrowers still hold, which the head keeps from now on.
    pub(crate) fn owner_ended(&self, job: JobId, tag: u32, how: &str) -> OwnerEnded {
        let mut inner = self.lock();
        inner.ended_owners.insert((job, tag), how.to_string());
        let owned_by_it = |object: &ObjectId| object.job_id() == job && object.owner_tag() == tag;
        let adopted: HashSet<ObjectId> = inner
            .lent
            .iter()
            .filter(|(object, lent)| {
                owned_by_it(object) && lent.owner_released && !lent.borrowers.is_empty()
            })
            .map(|(object, _)| *object)
            .collect();
        let gone = |object: &ObjectId| owned_by_it(object) && !adopted.contains(object);
        let holders: Vec<(ObjectId, Holder)> = inner
            .lent
            .iter()
            .filter(|(object, _)| object.job_id() == job && !gone(object))
            .flat_map(|(object, lent)| {
                lent.borrowers
                    .iter()
                    .filter(|holder| match holder {
                        Holder::Process(process) => *process == tag,
                        Holder::Object(held_by) => gone(held_by),
                    })
                    .map(|holder| (*object, *holder))
            })
            .collect();
        inner.lent.retain(|object, _| !gone(object));
        let mut free = Vec::new();
        for (object, holder) in holders {
            inner.release(object, holder, &mut free);
        }
        OwnerEnded { free, adopted }
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
            for holder in &lent.borrowers {
                match holder {
                    Holder::Process(tag) => sharing.borrowers.push(*tag),
                    Holder::Object(held_by) => sharing.holding_objects.push(*held_by),
                }
            }
            sharing.borrowers.sort_unstable();
            sharing.holding_objects.sort_unstable();
            sharing.owner_released = lent.owner_released;
        }
        sharing
    }
}

impl HeadState {
    /// Deletes every copy of `objects` on the live nodes holding one.
    pub(crate) async fn free_everywhere(&self, objects: &[ObjectId]) {
        let alive = self.nodes.alive_addresses();
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
            holder_object: Vec::new(),
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
                holding_objects: Vec::new(),
                owner_released: true,
                owner_ended: None
            }
        );
        let returned = [update(object, BorrowChange::Return)];
        assert!(borrows.apply(job, 11, &returned).unwrap().is_empty());
        // The last borrower ends without returning it.
        assert_eq!(borrows.owner_ended(job, 12, "killed").free, vec![object]);
        assert_eq!(borrows.sharing(object).borrowers, Vec::<u32>::new());
        // Released with no borrower: freed at once.
        assert_eq!(borrows.apply(job, 5, &released).unwrap(), vec![object]);
        // Held by return values: one freed by its owner, one whose owner
        // (tag 9) ended.
        let returned_by = |tag: u32, n: u64| {
            ObjectId::for_return(TaskId::for_child(TaskId::for_owner(job, tag), n), 0)
        };
        let (kept_by, ended_with) = (returned_by(0, 1), returned_by(9, 2));
        for holder in [kept_by, ended_with] {
            let mut held = update(object, BorrowChange::Borrow);
            held.holder_object = holder.to_vec();
            assert!(borrows.apply(job, 11, &[held]).unwrap().is_empty());
        }
        assert!(borrows.apply(job, 5, &released).unwrap().is_empty());
        assert_eq!(
            borrows.sharing(object).holding_objects.len(),
            2,
            "{:?}",
            borrows.sharing(object)
        );
        let mut freed_holder = update(object, BorrowChange::Return);
        freed_holder.holder_object = kept_by.to_vec();
        assert!(borrows.apply(job, 0, &[freed_holder]).unwrap().is_empty());
        assert_eq!(borrows.owner_ended(job, 9, "killed").free, vec![object]);
        // An owner that ends takes what it holds, but not what it released
        // and others hold.
        let (held, released_and_borrowed) = (returned_by(5, 3), returned_by(5, 4));
        for lent in [held, released_and_borrowed] {
            let borrow = [update(lent, BorrowChange::Borrow)];
            assert!(borrows.apply(job, 11, &borrow).unwrap().is_empty());
        }
        let release = [update(released_and_borrowed, BorrowChange::OwnerReleased)];
        assert!(borrows.apply(job, 5, &release).unwrap().is_empty());
        let ended = borrows.owner_ended(job, 5, "killed");
        assert_eq!(ended.adopted, HashSet::from([released_and_borrowed]));
        assert_eq!(borrows.sharing(released_and_borrowed).borrowers, vec![11]);
        assert_eq!(borrows.sharing(held).borrowers, Vec::<u32>::new());
        assert_eq!(borrows.sharing(held).owner_ended.as_deref(), Some("killed"));
        // Another job's object is refused, naming it.
        let other = JobId::from_bytes([0, 0, 0, 8]);
        let error = borrows.apply(other, 0, &borrow).unwrap_err();
        assert!(error.message().contains(&object.to_string()), "{error:?}");
    }
}
