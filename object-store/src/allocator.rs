//! Best-fit allocator over the byte range of the store's segment.
//!
//! Written by hand rather than taken from a crate (e.g. `offset-allocator`)
//! because the store wants two properties those do not promise: exact byte
//! accounting (every block a multiple of [`ALIGNMENT`]) and reuse of the
//! lowest, already-touched offsets first, so that a put lands in memory whose
//! tmpfs pages were faulted in by an earlier object (page faults, not the copy,
//! are what makes a fresh put slow).

use std::collections::{BTreeMap, BTreeSet};

/// Every object starts on a 64-byte boundary (Arrow buffers want it).
pub const ALIGNMENT: u64 = 64;

/// Rounds `size` up to a multiple of [`ALIGNMENT`].
pub fn aligned(size: u64) -> u64 {
    size.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Free-list allocator with coalescing. Best fit: the smallest free block that
/// fits, and among equal blocks the lowest offset.
#[derive(Debug)]
pub struct Allocator {
    capacity: u64,
    allocated: u64,
    free_by_offset: BTreeMap<u64, u64>,
    free_by_size: BTreeSet<(u64, u64)>,
}

impl Allocator {
    /// An allocator over `[0, capacity)`; `capacity` is rounded down to the alignment.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / ALIGNMENT * ALIGNMENT;
        let mut allocator = Self {
            capacity,
            allocated: 0,
            free_by_offset: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
        };
        if capacity > 0 {
            allocator.insert_free(0, capacity);
        }
        allocator
    }

    /// Usable bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes in allocated blocks (aligned sizes).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Size of the largest free block: the biggest allocation that fits now.
    #[cfg(test)]
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(size, _)| size)
    }

    /// Allocates `size` bytes (rounded up) and returns the offset, or `None`
    /// when no free block is large enough.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        let need = aligned(size.max(1));
        let &(block_size, offset) = self.free_by_size.range((need, 0)..).next()?;
        self.remove_free(offset, block_size);
        if block_size > need {
            self.insert_free(offset + need, block_size - need);
        }
        self.allocated += need;
        Some(offset)
    }

    /// Returns a block from [`allocate`](Self::allocate) with the same `size`.
    pub fn free(&mut self, offset: u64, size: u64) {
        let mut start = offset;
        let mut len = aligned(size.max(1));
        debug_assert!(start + len <= self.capacity, "free outside the arena");
        self.allocated -= len;
        if let Some((&prev_offset, &prev_len)) = self.free_by_offset.range(..start).next_back() {
            debug_assert!(prev_offset + prev_len <= start, "double free at {offset}");
            if prev_offset + prev_len == start {
                self.remove_free(prev_offset, prev_len);
                start = prev_offset;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free_by_offset.get(&(start + len)) {
            self.remove_free(start + len, next_len);
            len += next_len;
        }
        self.insert_free(start, len);
    }

    fn insert_free(&mut self, offset: u64, len: u64) {
        self.free_by_offset.insert(offset, len);
        self.free_by_size.insert((len, offset));
    }

    fn remove_free(&mut self, offset: u64, len: u64) {
        self.free_by_offset.remove(&offset);
        self.free_by_size.remove(&(len, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reuses_the_block_just_freed() {
        let mut allocator = Allocator::new(1 << 20);
        let a = allocator.allocate(1000).unwrap();
        let b = allocator.allocate(5000).unwrap();
        allocator.free(a, 1000);
        assert_eq!(
            allocator.allocate(900),
            Some(a),
            "best fit takes the hole, not the tail"
        );
        allocator.free(b, 5000);
        assert_eq!(allocator.allocated(), aligned(900));
    }

    #[test]
    fn coalesces_neighbours_back_into_one_block() {
        let mut allocator = Allocator::new(4096);
        let blocks: Vec<u64> = (0..4).map(|_| allocator.allocate(1024).unwrap()).collect();
        assert_eq!(allocator.allocate(1), None);
        for &offset in [1, 3, 0, 2].iter().map(|&i| &blocks[i]) {
            allocator.free(offset, 1024);
        }
        assert_eq!(allocator.largest_free(), 4096);
        assert_eq!(allocator.allocate(4096), Some(0));
    }

    proptest! {
        /// Random alloc/free never hands out overlapping blocks, never exceeds
        /// capacity, and returns to one free block when everything is freed.
        #[test]
        fn blocks_never_overlap(ops in proptest::collection::vec((any::<bool>(), 1u64..5000), 1..200)) {
            let mut allocator = Allocator::new(64 * 1024);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (free, size) in ops {
                if free && !live.is_empty() {
                    let (offset, size) = live.swap_remove(size as usize % live.len());
                    allocator.free(offset, size);
                } else if let Some(offset) = allocator.allocate(size) {
                    prop_assert_eq!(offset % ALIGNMENT, 0);
                    prop_assert!(offset + aligned(size) <= allocator.capacity());
                    for &(other, other_size) in &live {
                        prop_assert!(offset + aligned(size) <= other || other + aligned(other_size) <= offset);
                    }
                    live.push((offset, size));
                }
                let expected: u64 = live.iter().map(|&(_, size)| aligned(size)).sum();
                prop_assert_eq!(allocator.allocated(), expected);
            }
            for (offset, size) in live {
                allocator.free(offset, size);
            }
            prop_assert_eq!(allocator.largest_free(), allocator.capacity());
        }
    }
}
