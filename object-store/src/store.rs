//! The store: one small state machine per object, one owner (the store), one lock.
//!
//! ```text
//! create ──▶ Writing ──seal──▶ Sealed ──get/release (pins)──▶ delete
//!              │ writer dropped: aborted, space reclaimed
//! Sealed + unpinned, under memory pressure:
//!   secondary copy ──evict (LRU)──▶ gone
//!   primary copy   ──spill (LRU)──▶ Spilled ──get──▶ restored in memory
//! ```
//! Every method is synchronous. Those that may need room (`create`, `get` of a
//! spilled object) can wait for spill I/O: call them from `spawn_blocking` in
//! async code.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use photon_proto::ObjectId;
use tracing::debug;

use crate::allocator::{Allocator, aligned};
use crate::config::StoreConfig;
use crate::descriptor::ObjectDescriptor;
use crate::error::{Error, Result};
use crate::handles::{ObjectView, ObjectWriter};
use crate::segment::{Segment, nonce};
use crate::spill::Spiller;

/// Objects chosen for one spill add up to at least this much (when there are
/// that many candidates), so spill files are large and few.
const MIN_SPILL_BATCH: u64 = 16 << 20;

/// Granularity at which the store remembers which parts of the segment have
/// been faulted in.
const FAULT_CHUNK: u64 = 2 << 20;

/// Whether this node holds the object's primary copy or a copy of one held elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// The copy made where the object was created: spilled, never dropped, under pressure.
    Primary,
    /// A copy pulled from another node: evicted first under pressure.
    Secondary,
}

/// Counters and sizes of a store at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StoreStats {
    /// Usable bytes of shared memory.
    pub capacity: u64,
    /// Bytes allocated to objects in memory (64-byte aligned sizes).
    pub used: u64,
    /// Bytes that cannot be evicted or spilled now: pinned by views or being written.
    pub pinned: u64,
    /// Objects in the store, in memory or spilled.
    pub objects: u64,
    /// Bytes of objects that are spilled now.
    pub spilled_bytes: u64,
    /// Objects that are spilled now.
    pub spilled_objects: u64,
    /// Secondary copies evicted since start.
    pub evictions: u64,
    /// Objects spilled since start.
    pub spills_total: u64,
    /// Objects restored from spill since start.
    pub restores_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being written; `remote` when a writable descriptor was handed out.
    Writing {
        remote: bool,
    },
    Sealed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    InMemory {
        offset: u64,
    },
    Spilled {
        file: u64,
        file_offset: u64,
    },
    /// A `get` is reading it back from spill; others wait.
    Restoring,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    copy: CopyKind,
    phase: Phase,
    place: Place,
    pins: u32,
    last_used: u64,
    /// Being written to spill: stays readable, cannot be freed or chosen again.
    spilling: bool,
    /// Deleted while in use: invisible to `get`, freed when the last user lets go.
    delete_pending: bool,
}

impl Entry {
    fn in_use(&self) -> bool {
        self.pins > 0 || self.spilling || self.place == Place::Restoring
    }

    fn evictable(&self) -> bool {
        self.phase == Phase::Sealed
            && matches!(self.place, Place::InMemory { .. })
            && !self.in_use()
            && !self.delete_pending
    }
}

#[derive(Debug)]
struct SpillFile {
    name: String,
    live_objects: usize,
}

#[derive(Debug)]
struct State {
    allocator: Allocator,
    /// Per `FAULT_CHUNK` of the segment: pages already faulted in.
    faulted: Vec<bool>,
    objects: HashMap<ObjectId, Entry>,
    spill_files: HashMap<u64, SpillFile>,
    next_spill_file: u64,
    spills_in_flight: usize,
    clock: u64,
    evictions: u64,
    spills_total: u64,
    restores_total: u64,
}

impl State {
    /// Marks the chunks under `[offset, offset+size)` as faulted in and returns
    /// the span that was not yet, to populate before the write.
    fn claim_unfaulted(&mut self, offset: u64, size: u64, segment_len: u64) -> Option<(u64, u64)> {
        let first = (offset / FAULT_CHUNK) as usize;
        let last = ((offset + size - 1) / FAULT_CHUNK) as usize;
        let fresh: Vec<usize> = (first..=last).filter(|&c| !self.faulted[c]).collect();
        let (&lo, &hi) = (fresh.first()?, fresh.last()?);
        for chunk in lo..=hi {
            self.faulted[chunk] = true;
        }
        let start = lo as u64 * FAULT_CHUNK;
        let end = ((hi as u64 + 1) * FAULT_CHUNK).min(segment_len);
        Some((start, end - start))
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Frees an entry's memory or spill slot; the entry is already removed.
    fn release_storage(&mut self, entry: &Entry, spiller: &Spiller) {
        match entry.place {
            Place::InMemory { offset } => self.allocator.free(offset, entry.size),
            Place::Spilled { file, .. } => self.drop_spill_reference(file, spiller),
            Place::Restoring => unreachable!("restoring objects are in use"),
        }
    }

    fn drop_spill_reference(&mut self, file: u64, spiller: &Spiller) {
        let spill_file = self
            .spill_files
            .get_mut(&file)
            .expect("spill file is tracked");
        spill_file.live_objects -= 1;
        if spill_file.live_objects == 0 {
            let spill_file = self.spill_files.remove(&file).expect("present");
            spiller.delete(&spill_file.name);
        }
    }

    fn pinned_bytes(&self) -> u64 {
        self.objects
            .values()
            .filter(|e| {
                matches!(e.place, Place::InMemory { .. })
                    && (e.in_use() || e.phase != Phase::Sealed)
            })
            .map(|e| aligned(e.size))
            .sum()
    }

    /// Evicts the least recently used unpinned secondary copy; false if none.
    fn evict_one_secondary(&mut self) -> bool {
        let victim = self
            .objects
            .iter()
            .filter(|(_, e)| e.copy == CopyKind::Secondary && e.evictable())
            .min_by_key(|(_, e)| e.last_used)
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        let entry = self.objects.remove(&id).expect("victim exists");
        if let Place::InMemory { offset } = entry.place {
            self.allocator.free(offset, entry.size);
        }
        self.evictions += 1;
        debug!(object = %id, size = entry.size, "evicted secondary copy");
        true
    }

    /// Least recently used unpinned primaries adding up to at least `need`
    /// (and to a batch of `MIN_SPILL_BATCH`, or an eighth of a small store).
    fn spill_victims(&self, need: u64, capacity: u64) -> Vec<(ObjectId, u64, u64)> {
        let mut candidates: Vec<(u64, ObjectId, u64, u64)> = self
            .objects
            .iter()
            .filter(|(_, e)| e.copy == CopyKind::Primary && e.evictable())
            .map(|(id, e)| match e.place {
                Place::InMemory { offset } => (e.last_used, *id, offset, e.size),
                _ => unreachable!("evictable objects are in memory"),
            })
            .collect();
        candidates.sort_unstable_by_key(|c| c.0);
        // Small stores spill in smaller batches, so a restore does not push
        // out most of the store.
        let target = need.max(MIN_SPILL_BATCH.min(capacity / 8));
        let mut total = 0;
        let mut victims = Vec::new();
        for (_, id, offset, size) in candidates {
            if total >= target {
                break;
            }
            total += aligned(size);
            victims.push((id, offset, size));
        }
        victims
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// Signalled when a spill or restore finishes.
    changed: Condvar,
    capacity: u64,
    spiller: Spiller,
    // Dropped last: views and writers point into it.
    segment: Segment,
}

/// A node's shared-memory object store. Cheap to clone (shared handle); the
/// segment and spill files go away when the last handle, view and writer drop.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("segment", &self.inner.segment.path())
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl ObjectStore {
    /// Creates the segment (in tmpfs when it has room) and the spill location.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let segment = Segment::create(&config)?;
        let tag = format!("{}-{:016x}", std::process::id(), nonce());
        let spiller = Spiller::open(config.spill_url.as_deref(), &config.fallback_root, &tag)?;
        let allocator = Allocator::new(segment.len());
        let chunks = segment.len().div_ceil(FAULT_CHUNK) as usize;
        let capacity = allocator.capacity();
        debug!(segment = %segment.path().display(), capacity, spill = spiller.location(), "object store open");
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    allocator,
                    faulted: vec![config.prefault; chunks],
                    objects: HashMap::new(),
                    spill_files: HashMap::new(),
                    next_spill_file: 0,
                    spills_in_flight: 0,
                    clock: 0,
                    evictions: 0,
                    spills_total: 0,
                    restores_total: 0,
                }),
                changed: Condvar::new(),
                capacity,
                spiller,
                segment,
            }),
        })
    }

    /// Usable capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Path of the shared-memory segment other processes map.
    pub fn segment_path(&self) -> &std::path::Path {
        self.inner.segment.path()
    }

    /// Where spilled objects go.
    pub fn spill_location(&self) -> &str {
        self.inner.spiller.location()
    }

    /// Allocates a primary object of `size` bytes and returns its writer.
    /// Seal it with [`ObjectWriter::seal`]; dropping the writer aborts it.
    pub fn create(&self, id: ObjectId, size: u64) -> Result<ObjectWriter> {
        self.create_copy(id, size, CopyKind::Primary)
    }

    /// Like [`create`](Self::create), choosing whether this is the primary copy.
    pub fn create_copy(&self, id: ObjectId, size: u64, copy: CopyKind) -> Result<ObjectWriter> {
        if size == 0 {
            return Err(Error::ZeroSize { id });
        }
        if aligned(size) > self.inner.capacity {
            return Err(Error::TooLarge {
                id,
                size,
                capacity: self.inner.capacity,
            });
        }
        let inner = &self.inner;
        let state = inner.lock();
        if let Some(existing) = state.objects.get(&id) {
            return Err(Error::AlreadyExists {
                id,
                size: existing.size,
            });
        }
        let (mut state, offset) = inner.allocate(state, id, size)?;
        // The lock may have been released while making room.
        if let Some(existing) = state.objects.get(&id) {
            let existing_size = existing.size;
            state.allocator.free(offset, size);
            return Err(Error::AlreadyExists {
                id,
                size: existing_size,
            });
        }
        let last_used = state.tick();
        state.objects.insert(
            id,
            Entry {
                size,
                copy,
                phase: Phase::Writing { remote: false },
                place: Place::InMemory { offset },
                pins: 0,
                last_used,
                spilling: false,
                delete_pending: false,
            },
        );
        let unfaulted = state.claim_unfaulted(offset, size, inner.segment.len());
        drop(state);
        // Fresh tmpfs pages cost a trap each on first write, which made a first
        // 1 GiB put ~40x slower than memcpy here; one populate call is cheaper,
        // and reports a full tmpfs as an error instead of a SIGBUS mid-write.
        let writer = ObjectWriter::new(self.inner.clone(), id, offset, size);
        if let Some((start, len)) = unfaulted {
            inner.segment.populate(start, len).map_err(Error::io(format!(
                "cannot fault in {len} bytes of shared memory for object {id} in {} (is the filesystem full?)",
                inner.segment.path().display()
            )))?;
        }
        Ok(writer)
    }

    /// Convenience: create, copy `data` in, seal.
    pub fn put(&self, id: ObjectId, data: &[u8]) -> Result<()> {
        let mut writer = self.create(id, data.len() as u64)?;
        writer.copy_from_slice(data);
        writer.seal()
    }

    /// Seals an object whose writable descriptor was handed to another process
    /// (see [`ObjectWriter::into_descriptor`]).
    pub fn seal(&self, id: ObjectId) -> Result<()> {
        let mut state = self.inner.lock();
        let clock = state.tick();
        let entry = state.live_entry(id)?;
        match entry.phase {
            Phase::Sealed => Err(Error::AlreadySealed {
                id,
                size: entry.size,
            }),
            Phase::Writing { remote: false } => Err(Error::NotSealed {
                id,
                size: entry.size,
                hint: "it has a writer in this process: seal it with ObjectWriter::seal",
            }),
            Phase::Writing { remote: true } => {
                entry.phase = Phase::Sealed;
                entry.last_used = clock;
                Ok(())
            }
        }
    }

    /// Aborts an object whose writable descriptor was handed to another process
    /// (the writer died or gave up) and reclaims its space.
    pub fn abort(&self, id: ObjectId) -> Result<()> {
        let mut state = self.inner.lock();
        let entry = state.live_entry(id)?;
        match entry.phase {
            Phase::Writing { remote: true } => {
                self.inner.remove_and_free(&mut state, id);
                Ok(())
            }
            Phase::Sealed => Err(Error::AlreadySealed {
                id,
                size: entry.size,
            }),
            Phase::Writing { remote: false } => Err(Error::NotSealed {
                id,
                size: entry.size,
                hint: "it has a writer in this process: drop the writer to abort it",
            }),
        }
    }

    /// Returns a pinned, read-only, zero-copy view of a sealed object, restoring
    /// it from spill first if needed. Dropping the view releases the pin.
    pub fn get(&self, id: ObjectId) -> Result<ObjectView> {
        let inner = &self.inner;
        let mut state = inner.lock();
        loop {
            let clock = state.tick();
            let entry = state.live_entry(id)?;
            if let Phase::Writing { .. } = entry.phase {
                return Err(Error::NotSealed {
                    id,
                    size: entry.size,
                    hint: "seal it before reading",
                });
            }
            match entry.place {
                Place::InMemory { offset } => {
                    entry.pins += 1;
                    entry.last_used = clock;
                    let size = entry.size;
                    drop(state);
                    return Ok(ObjectView::new(inner.clone(), id, offset, size));
                }
                Place::Restoring => state = inner.wait(state),
                Place::Spilled { file, file_offset } => {
                    entry.place = Place::Restoring;
                    entry.pins += 1;
                    return inner.restore(state, id, file, file_offset);
                }
            }
        }
    }

    /// True if the object is in the store (in memory or spilled) and not deleted.
    pub fn contains(&self, id: ObjectId) -> bool {
        self.inner
            .lock()
            .objects
            .get(&id)
            .is_some_and(|e| !e.delete_pending)
    }

    /// Deletes a sealed object. An object still pinned by views disappears from
    /// `get` now and frees its memory when the last view drops.
    pub fn delete(&self, id: ObjectId) -> Result<()> {
        let mut state = self.inner.lock();
        let entry = state.live_entry(id)?;
        if let Phase::Writing { .. } = entry.phase {
            return Err(Error::NotSealed {
                id,
                size: entry.size,
                hint: "drop its writer (or call abort) to discard it",
            });
        }
        if entry.in_use() {
            entry.delete_pending = true;
        } else {
            self.inner.remove_and_free(&mut state, id);
        }
        Ok(())
    }

    /// Drops an object whatever state it is in: a sealed one is deleted (as
    /// [`ObjectStore::delete`]), one handed to another process for writing is
    /// aborted. Returns its size. Only an object this process is writing
    /// itself is refused.
    pub fn discard(&self, id: ObjectId) -> Result<u64> {
        let (size, phase) = {
            let mut state = self.inner.lock();
            let entry = state.live_entry(id)?;
            (entry.size, entry.phase)
        };
        match phase {
            Phase::Writing { remote: true } => self.abort(id)?,
            _ => self.delete(id)?,
        }
        Ok(size)
    }

    /// A descriptor another process on this node can map to read the object.
    /// The caller must hold a view (pin) for as long as the other process reads.
    pub fn descriptor(&self, view: &ObjectView) -> ObjectDescriptor {
        view.descriptor()
    }

    /// Size of a sealed object, without pinning or restoring it.
    pub fn object_size(&self, id: ObjectId) -> Result<u64> {
        let mut state = self.inner.lock();
        let entry = state.live_entry(id)?;
        match entry.phase {
            Phase::Sealed => Ok(entry.size),
            Phase::Writing { .. } => Err(Error::NotSealed {
                id,
                size: entry.size,
                hint: "wait until its writer seals it",
            }),
        }
    }

    /// Every sealed object in the store (in memory or spilled).
    pub fn sealed_ids(&self) -> Vec<ObjectId> {
        self.inner
            .lock()
            .objects
            .iter()
            .filter(|(_, e)| e.phase == Phase::Sealed && !e.delete_pending)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every object in the store: sealed (in memory or spilled) or being written.
    pub fn ids(&self) -> Vec<ObjectId> {
        self.inner
            .lock()
            .objects
            .iter()
            .filter(|(_, e)| !e.delete_pending)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Current sizes and counters.
    pub fn stats(&self) -> StoreStats {
        let state = self.inner.lock();
        let (spilled_objects, spilled_bytes) = state
            .objects
            .values()
            .filter(|e| matches!(e.place, Place::Spilled { .. }))
            .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size));
        StoreStats {
            capacity: self.inner.capacity,
            used: state.allocator.allocated(),
            pinned: state.pinned_bytes(),
            objects: state.objects.values().filter(|e| !e.delete_pending).count() as u64,
            spilled_bytes,
            spilled_objects,
            evictions: state.evictions,
            spills_total: state.spills_total,
            restores_total: state.restores_total,
        }
    }
}

impl State {
    /// The entry for `id` unless it is unknown or deleted.
    fn live_entry(&mut self, id: ObjectId) -> Result<&mut Entry> {
        self.objects
            .get_mut(&id)
            .filter(|e| !e.delete_pending)
            .ok_or(Error::NotFound { id })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the tables consistent (every
        // mutation is a few plain assignments), so poisoning is not fatal.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.segment
    }

    fn remove_and_free(&self, state: &mut State, id: ObjectId) {
        if let Some(entry) = state.objects.remove(&id) {
            state.release_storage(&entry, &self.spiller);
        }
    }

    /// Seals a locally written object (called by its writer).
    pub(crate) fn seal_local(&self, id: ObjectId) -> Result<()> {
        let mut state = self.lock();
        let clock = state.tick();
        let entry = state.live_entry(id)?;
        entry.phase = Phase::Sealed;
        entry.last_used = clock;
        Ok(())
    }

    /// Marks a local writer's object as written by another process.
    pub(crate) fn hand_to_remote_writer(&self, id: ObjectId) {
        if let Ok(entry) = self.lock().live_entry(id) {
            entry.phase = Phase::Writing { remote: true };
        }
    }

    /// Discards an unsealed object whose writer was dropped.
    pub(crate) fn abort_local(&self, id: ObjectId) {
        let mut state = self.lock();
        if matches!(
            state.objects.get(&id).map(|e| e.phase),
            Some(Phase::Writing { remote: false })
        ) {
            self.remove_and_free(&mut state, id);
        }
    }

    /// Drops one pin (a view went away).
    pub(crate) fn release(&self, id: ObjectId) {
        let mut state = self.lock();
        let Some(entry) = state.objects.get_mut(&id) else {
            return;
        };
        entry.pins -= 1;
        if entry.delete_pending && !entry.in_use() {
            self.remove_and_free(&mut state, id);
        }
    }

    /// Finds `size` bytes, evicting secondaries and spilling primaries as
    /// needed. May release the lock while spilling.
    fn allocate<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        id: ObjectId,
        size: u64,
    ) -> Result<(MutexGuard<'a, State>, u64)> {
        loop {
            if let Some(offset) = state.allocator.allocate(size) {
                return Ok((state, offset));
            }
            if state.evict_one_secondary() {
                continue;
            }
            let victims = state.spill_victims(aligned(size), self.capacity);
            if victims.is_empty() {
                if state.spills_in_flight > 0 {
                    // Another thread's spill will free memory; wait for it.
                    state = self.wait(state);
                    continue;
                }
                return Err(Error::OutOfMemory {
                    id,
                    size,
                    capacity: self.capacity,
                    used: state.allocator.allocated(),
                    pinned: state.pinned_bytes(),
                });
            }
            state = self.spill(state, victims)?;
        }
    }

    /// Writes `victims` into one spill file with the lock released, then frees
    /// the memory of those still unused.
    fn spill<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        victims: Vec<(ObjectId, u64, u64)>,
    ) -> Result<MutexGuard<'a, State>> {
        let file = state.next_spill_file;
        state.next_spill_file += 1;
        state.spills_in_flight += 1;
        let name = format!("spill-{file:08}.bin");
        let mut file_offsets = Vec::with_capacity(victims.len());
        let mut file_len = 0;
        for &(id, _, size) in &victims {
            state.objects.get_mut(&id).expect("victim exists").spilling = true;
            file_offsets.push(file_len);
            file_len += size;
        }
        drop(state);
        // One fused buffer per spill file. The bytes are copied out of shared
        // memory because an `object_store` backend may keep the payload it is
        // given (`memory://` does), and the segment range is reused right after.
        let mut fused = Vec::with_capacity(file_len as usize);
        for &(_, offset, size) in &victims {
            fused.extend_from_slice(self.sealed_bytes(offset, size));
        }
        let result = self.spiller.write(&name, Bytes::from(fused));
        let mut state = self.lock();
        state.spills_in_flight -= 1;
        let mut live_objects = 0;
        for (&(id, offset, size), file_offset) in victims.iter().zip(file_offsets) {
            let entry = state.objects.get_mut(&id).expect("spilling objects stay");
            entry.spilling = false;
            if entry.delete_pending && !entry.in_use() {
                state.objects.remove(&id);
                state.allocator.free(offset, size);
            } else if result.is_ok() && !entry.in_use() {
                entry.place = Place::Spilled { file, file_offset };
                state.allocator.free(offset, size);
                state.spills_total += 1;
                live_objects += 1;
            }
            // Otherwise the spill failed or the object was read meanwhile: it stays in memory.
        }
        self.changed.notify_all();
        match result {
            Ok(()) => {
                if live_objects > 0 {
                    state
                        .spill_files
                        .insert(file, SpillFile { name, live_objects });
                } else {
                    self.spiller.delete(&name);
                }
                debug!(
                    file,
                    objects = live_objects,
                    bytes = file_len,
                    "spilled objects"
                );
                Ok(state)
            }
            Err(message) => Err(Error::Spill {
                id: victims[0].0,
                location: format!("{}/{name}", self.spiller.location()),
                message,
            }),
        }
    }

    /// Reads a spilled object back into memory; the entry is `Restoring` and
    /// pinned by the caller. Returns the caller's view.
    fn restore<'a>(
        self: &'a Arc<Self>,
        state: MutexGuard<'a, State>,
        id: ObjectId,
        file: u64,
        file_offset: u64,
    ) -> Result<ObjectView> {
        let size = state.objects[&id].size;
        let name = state.spill_files[&file].name.clone();
        let (state, offset) = match self.allocate(state, id, size) {
            Ok(allocated) => allocated,
            Err(err) => {
                self.undo_restore(&mut self.lock(), id, file, file_offset);
                return Err(err);
            }
        };
        drop(state);
        let read = self.spiller.read(&name, file_offset..file_offset + size);
        let mut state = self.lock();
        let bytes = match read {
            Ok(bytes) if bytes.len() as u64 == size => bytes,
            other => {
                state.allocator.free(offset, size);
                self.undo_restore(&mut state, id, file, file_offset);
                let message = match other {
                    Ok(bytes) => format!("read {} bytes back, expected {size}", bytes.len()),
                    Err(message) => message,
                };
                return Err(Error::Spill {
                    id,
                    location: format!("{}/{name}", self.spiller.location()),
                    message: format!("restore failed: {message}"),
                });
            }
        };
        // SAFETY: [offset, offset+size) was allocated above for this object
        // alone and no view of it exists yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.segment.base().add(offset as usize),
                size as usize,
            );
        }
        state.restores_total += 1;
        state.drop_spill_reference(file, &self.spiller);
        state
            .objects
            .get_mut(&id)
            .expect("restoring objects stay")
            .place = Place::InMemory { offset };
        self.changed.notify_all();
        drop(state);
        Ok(ObjectView::new(self.clone(), id, offset, size))
    }

    /// Puts a failed restore's entry back as it was (spilled, unpinned).
    fn undo_restore(&self, state: &mut State, id: ObjectId, file: u64, file_offset: u64) {
        let entry = state.objects.get_mut(&id).expect("restoring objects stay");
        entry.place = Place::Spilled { file, file_offset };
        entry.pins -= 1;
        if entry.delete_pending && !entry.in_use() {
            self.remove_and_free(state, id);
        }
        self.changed.notify_all();
    }

    /// The bytes of a sealed object that is marked `spilling` (so nothing
    /// frees or rewrites it while the lock is released).
    fn sealed_bytes(&self, offset: u64, size: u64) -> &[u8] {
        // SAFETY: offset + size is inside the mapping (allocator invariant) and
        // the object is sealed and cannot be freed while marked spilling.
        unsafe {
            std::slice::from_raw_parts(self.segment.base().add(offset as usize), size as usize)
        }
    }
}
