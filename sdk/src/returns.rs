//! Calls with several return values (Ray's `num_returns`): a call returning
//! an `n`-tuple makes `n` objects, `ObjectId(task, 0..n)`, each with its own
//! reference, transfer, freeing and lineage. The worker gets the values as one
//! framed buffer from the generated code and stores each on its own.

use bytes::Bytes;
use photon_proto::{ObjectId, TaskId};

use crate::object_ref::ObjectRef;

/// The objects one task or actor call makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Returns {
    task: TaskId,
    count: u32,
}

impl Returns {
    /// `count` objects of `task` (at least one).
    pub(crate) fn new(task: TaskId, count: u32) -> Self {
        Self {
            task,
            count: count.max(1),
        }
    }

    /// Return 0: the key a call is known by (cancels, progress, replies).
    pub(crate) fn primary(&self) -> ObjectId {
        ObjectId::for_return(self.task, 0)
    }

    /// Every return a call of `primary`'s task could have (for a cancel,
    /// which knows the call by one object only).
    pub(crate) fn any_of(primary: ObjectId) -> Self {
        Self::new(primary.task_id(), MAX_RETURNS)
    }

    /// The call's primary object, given any of its returns.
    pub(crate) fn primary_of(id: ObjectId) -> ObjectId {
        ObjectId::for_return(id.task_id(), 0)
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = ObjectId> + use<> {
        let task = self.task;
        (0..self.count).map(move |i| ObjectId::for_return(task, i))
    }
}

/// What a call hands its caller: one `ObjectRef<T>`, or a tuple of them for
/// a function or method declared with `num_returns = n` (what the generated
/// `remote`/method functions return). The number of refs is the type's.
pub trait CallReturns: Sized {
    /// How many objects the call makes.
    const COUNT: u32;

    /// Builds the value from the call's refs, made in return order by
    /// `next` (no collection in between: one allocation less per call).
    #[doc(hidden)]
    fn from_refs(next: &mut dyn FnMut() -> ObjectRef<()>) -> Self;
}

impl<T> CallReturns for ObjectRef<T> {
    const COUNT: u32 = 1;

    fn from_refs(next: &mut dyn FnMut() -> ObjectRef<()>) -> Self {
        ObjectRef::new(next().handle)
    }
}

macro_rules! tuple_returns {
    ($count:literal: $($t:ident),+) => {
        impl<$($t),+> CallReturns for ($(ObjectRef<$t>,)+) {
            const COUNT: u32 = $count;

            fn from_refs(next: &mut dyn FnMut() -> ObjectRef<()>) -> Self {
                ($(<ObjectRef<$t> as CallReturns>::from_refs(next),)+)
            }
        }
    };
}

tuple_returns!(2: A, B);
tuple_returns!(3: A, B, C);
tuple_returns!(4: A, B, C, D);
tuple_returns!(5: A, B, C, D, E);
tuple_returns!(6: A, B, C, D, E, F);
tuple_returns!(7: A, B, C, D, E, F, G);
tuple_returns!(8: A, B, C, D, E, F, G, H);

/// The most returns a call may declare (the tuples `CallReturns` covers).
pub const MAX_RETURNS: u32 = 8;

/// Frames the separately encoded return values of one call (for generated
/// code): each is a little-endian `u64` length and the bytes.
pub fn encode_returns(parts: Vec<Result<Vec<u8>, String>>) -> Result<Vec<u8>, String> {
    let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut framed = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
        framed.extend_from_slice(&part);
    }
    Ok(framed)
}

/// Splits a framed result into its `expected` values (slices, no copy).
pub(crate) fn split_returns(framed: Bytes, expected: u32) -> Result<Vec<Bytes>, String> {
    let mut parts = Vec::with_capacity(expected as usize);
    let mut at = 0usize;
    while at < framed.len() {
        let Some(header) = framed.get(at..at + 8) else {
            return Err(format!("a framed result is cut short at byte {at}"));
        };
        let len = u64::from_le_bytes(header.try_into().expect("8 bytes")) as usize;
        let start = at + 8;
        let Some(end) = start.checked_add(len).filter(|end| *end <= framed.len()) else {
            return Err(format!(
                "a framed result's value {} claims {len} bytes past its end",
                parts.len()
            ));
        };
        parts.push(framed.slice(start..end));
        at = end;
    }
    if parts.len() != expected as usize {
        return Err(format!(
            "the call returned {} values but was declared with num_returns = {expected}; do the \
             driver and the workers run the same build?",
            parts.len()
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_returns_split_back_into_their_values() {
        let framed = encode_returns(vec![Ok(b"ab".to_vec()), Ok(vec![]), Ok(vec![7; 300])])
            .expect("encodes");
        let parts = split_returns(Bytes::from(framed.clone()), 3).expect("splits");
        assert_eq!(parts[0].as_ref(), b"ab");
        assert!(parts[1].is_empty());
        assert_eq!(parts[2].as_ref(), &[7u8; 300][..]);

        let wrong = split_returns(Bytes::from(framed.clone()), 2).unwrap_err();
        assert!(wrong.contains("returned 3 values") && wrong.contains("num_returns = 2"));
        let cut = split_returns(Bytes::from(framed[..30].to_vec()), 3).unwrap_err();
        assert!(cut.contains("past its end"), "{cut}");
    }

    #[test]
    fn an_encoding_error_of_any_value_fails_the_call() {
        let err = encode_returns(vec![Ok(vec![1]), Err("bad value".into())]).unwrap_err();
        assert_eq!(err, "bad value");
    }

    #[test]
    fn returns_are_numbered_from_the_primary() {
        let task = TaskId::from_slice(&[3; 16]).unwrap();
        let returns = Returns::new(task, 3);
        let ids: Vec<_> = returns.ids().collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], returns.primary());
        assert_eq!(Returns::primary_of(ids[2]), returns.primary());
        assert_eq!(ids[2].index(), 2);
        assert_eq!(Returns::new(task, 0).count(), 1);
    }
}
