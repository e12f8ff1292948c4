//! Objects written and read by local processes (drivers and workers) through
//! shared memory: `CreateObject` hands out a writable descriptor of a fresh
//! object, the client maps and fills it, `SealObject` publishes it and records
//! this node in the head's directory. `GetObject` pins a sealed object
//! (pulling it from another node first if asked) and hands out a read-only
//! descriptor until `ReleaseObject`.
//!
//! Pins and unsealed objects belong to the process that took them: when it
//! ends (exit, crash, SIGKILL) [`LocalClients::release_dead`] drops its pins
//! and aborts what it left half written, so nothing stays pinned for good.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use photon_object_store::{ObjectStore, ObjectView};
use photon_proto::v1::{
    ClientProcess, CreateObjectRequest, FetchObjectRequest, GetObjectRequest, ObjectDescriptor,
    ReleaseObjectRequest, SealObjectRequest,
};
use photon_proto::{JobId, ObjectId};
use tonic::{Request, Status};
use tracing::info;

use crate::transfer::{TransferService, store_status};

/// A process holding something in the store. `None`: a process this host
/// cannot see (another pid namespace, or an old client), never released on
/// its behalf.
type Holder = Option<ClientProcess>;

fn holder(process: Option<ClientProcess>) -> Holder {
    process.filter(ClientProcess::is_visible_and_alive)
}

/// Which holders have ended, each process looked up once per pass.
#[derive(Default)]
struct Liveness(HashMap<(u32, u64), bool>);

impl Liveness {
    fn is_dead(&mut self, holder: &Holder) -> bool {
        holder.as_ref().is_some_and(|p| {
            !*self
                .0
                .entry((p.pid, p.started))
                .or_insert_with(|| p.is_visible_and_alive())
        })
    }
}

#[derive(Default)]
struct Held {
    /// One view per outstanding `GetObject`, with the reader that took it.
    pins: HashMap<ObjectId, Vec<(Holder, ObjectView)>>,
    /// Objects handed out for writing and not sealed yet, with their writer.
    writers: HashMap<ObjectId, Holder>,
}

/// What local processes hold in the store: read pins and unsealed objects.
#[derive(Default)]
pub struct LocalClients(Mutex<Held>);

impl LocalClients {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a pin `reader` took.
    fn pin(&self, id: ObjectId, reader: Holder, view: ObjectView) {
        self.lock().pins.entry(id).or_default().push((reader, view));
    }

    /// Records that `writer` is writing `id`.
    fn writing(&self, id: ObjectId, writer: Holder) {
        self.lock().writers.insert(id, writer);
    }

    /// Drops the pins of processes that ended and aborts the objects they
    /// left unsealed; returns how many pins and objects were released.
    pub fn release_dead(&self, store: &ObjectStore) -> (usize, usize) {
        let mut held = self.lock();
        let mut liveness = Liveness::default();
        let mut pins = 0;
        held.pins.retain(|_, views| {
            let before = views.len();
            views.retain(|(reader, _)| !liveness.is_dead(reader));
            pins += before - views.len();
            !views.is_empty()
        });
        let orphans: Vec<ObjectId> = held
            .writers
            .iter()
            .filter(|(_, writer)| liveness.is_dead(writer))
            .map(|(id, _)| *id)
            .collect();
        for id in &orphans {
            held.writers.remove(id);
            let _ = store.abort(*id);
        }
        (pins, orphans.len())
    }

    /// Forgets the writer of `id` (it was discarded).
    pub(crate) fn forget_writer(&self, id: ObjectId) {
        self.lock().writers.remove(&id);
    }

    /// Forgets every pin and writer of the objects of job `job` (or of its
    /// owner `owner_tag`, when not 0): they ended, and their objects are
    /// being freed whoever holds them.
    fn forget_owned(&self, job: JobId, owner_tag: u32, keep: &HashSet<ObjectId>) {
        let gone = |id: &ObjectId| id.owned_by(job, owner_tag) && !keep.contains(id);
        let mut held = self.lock();
        held.pins.retain(|id, _| !gone(id));
        held.writers.retain(|id, _| !gone(id));
    }
}

/// How often the processes holding pins and unsealed objects are checked.
const RELEASE_DEAD_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Releases what ended processes held, every [`RELEASE_DEAD_EVERY`], until `stop`.
pub async fn release_dead_holders(
    clients: std::sync::Arc<LocalClients>,
    store: ObjectStore,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(RELEASE_DEAD_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let clients = clients.clone();
        let store = store.clone();
        let released = tokio::task::spawn_blocking(move || clients.release_dead(&store)).await;
        if let Ok((pins, objects)) = released
            && pins + objects > 0
        {
            info!(
                pins,
                objects, "released what ended processes held in the store"
            );
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: &ObjectStore,
    call: impl FnOnce(ObjectStore) -> Result<T, photon_object_store::Error> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)
}

impl TransferService {
    /// `CreateObject`: a writable descriptor of a new primary object. A
    /// half-written object of the same id (its writer died; the task is being
    /// retried) is dropped first; a sealed one is ALREADY_EXISTS.
    pub async fn create_object(
        &self,
        request: Request<CreateObjectRequest>,
    ) -> Result<ObjectDescriptor, Status> {
        let request = request.into_inner();
        let id = ObjectId::from_slice(&request.object_id)?;
        let size = request.size;
        let descriptor = blocking(self.store(), move |store| {
            match store.create(id, size) {
                Err(photon_object_store::Error::AlreadyExists { .. }) => {
                    // Unsealed leftovers can be aborted; sealed objects cannot.
                    store
                        .abort(id)
                        .map_err(|_| photon_object_store::Error::AlreadyExists { id, size })?;
                    store.create(id, size)
                }
                other => other,
            }
            .map(|writer| writer.into_descriptor())
        })
        .await?;
        self.clients().writing(id, holder(request.writer));
        Ok(ObjectDescriptor::from(&descriptor))
    }

    /// `SealObject`: the object becomes readable and the head learns it is here.
    pub async fn seal_object(&self, request: Request<SealObjectRequest>) -> Result<(), Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        blocking(self.store(), move |store| store.seal(id)).await?;
        self.clients().forget_writer(id);
        self.announce(id).await;
        Ok(())
    }

    /// `GetObject`: pins the object and describes it (fetching it first if asked).
    pub async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<ObjectDescriptor, Status> {
        let request = request.into_inner();
        let id = ObjectId::from_slice(&request.object_id)?;
        if request.fetch && !self.store().contains(id) {
            self.fetch_object(Request::new(FetchObjectRequest {
                object_id: id.to_vec(),
                source_address: String::new(),
            }))
            .await?;
        }
        let view = blocking(self.store(), move |store| store.get(id)).await?;
        let descriptor = ObjectDescriptor::from(&self.store().descriptor(&view));
        self.clients().pin(id, holder(request.reader), view);
        Ok(descriptor)
    }

    /// `ReleaseObject`: drops one pin taken by `GetObject` (the reader's own,
    /// when it named itself).
    pub fn release_object(&self, request: Request<ReleaseObjectRequest>) -> Result<(), Status> {
        let request = request.into_inner();
        let id = ObjectId::from_slice(&request.object_id)?;
        let reader = request.reader.map(|p| p.pid);
        let mut held = self.clients().lock();
        let views = held
            .pins
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("object {id} is not pinned here")))?;
        let position = views
            .iter()
            .rposition(|(holder, _)| holder.as_ref().map(|p| p.pid) == reader)
            .unwrap_or(views.len() - 1);
        views.remove(position);
        if views.is_empty() {
            held.pins.remove(&id);
        }
        Ok(())
    }

    /// `FreeJobObjects`: frees every object of `job` (or of its owner with
    /// `owner_tag`, when not 0) here, in memory, spilled or half written,
    /// dropping whatever pins them; returns the count and bytes freed. The
    /// head forgets their locations itself.
    pub async fn free_owned_objects(
        &self,
        job: JobId,
        owner_tag: u32,
        keep: std::collections::HashSet<ObjectId>,
    ) -> Result<(u64, u64), Status> {
        let clients = self.clients().clone();
        // Off the async runtime: spilled objects' files are deleted.
        let (objects, bytes) = blocking(self.store(), move |store| {
            clients.forget_owned(job, owner_tag, &keep);
            let (mut objects, mut bytes) = (0, 0);
            for id in store
                .ids()
                .into_iter()
                .filter(|id| id.owned_by(job, owner_tag) && !keep.contains(id))
            {
                if let Ok(size) = store.discard(id) {
                    objects += 1;
                    bytes += size;
                }
            }
            Ok((objects, bytes))
        })
        .await?;
        if objects > 0 {
            info!(%job, owner_tag, objects, bytes, "freed the objects of an ended job or owner");
        }
        Ok((objects, bytes))
    }
}

#[cfg(test)]
mod tests {
    use photon_object_store::StoreConfig;
    use photon_proto::{TaskId, process_started};

    use super::*;

    #[test]
    fn what_a_killed_process_held_is_released_and_a_live_ones_pins_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(StoreConfig {
            shm_root: dir.path().into(),
            fallback_root: dir.path().into(),
            ..StoreConfig::with_capacity(1 << 20)
        })
        .unwrap();
        let task = TaskId::for_driver(JobId::from_u32(1));
        let (read, written) = (ObjectId::for_put(task, 1), ObjectId::for_put(task, 2));
        store.put(read, &[1; 1000]).unwrap();
        let _descriptor = store.create(written, 1000).unwrap().into_descriptor();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let doomed = ClientProcess {
            pid: child.id(),
            started: process_started(child.id()).unwrap(),
        };
        let clients = LocalClients::default();
        clients.pin(read, holder(Some(doomed)), store.get(read).unwrap());
        clients.writing(written, holder(Some(doomed)));
        let me = holder(Some(ClientProcess::this_process()));
        clients.pin(read, me, store.get(read).unwrap());
        // Pinned by a process this host cannot see: kept.
        let stranger = ClientProcess {
            pid: doomed.pid,
            started: doomed.started + 1,
        };
        clients.pin(read, holder(Some(stranger)), store.get(read).unwrap());
        assert_eq!(clients.release_dead(&store), (0, 0));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(clients.release_dead(&store), (1, 1));
        assert!(
            !store.contains(written),
            "the half-written object is aborted"
        );
        assert_eq!(clients.lock().pins[&read].len(), 2);
        clients.lock().pins.clear();
        store.delete(read).unwrap();
        assert_eq!(store.stats().used, 0, "no pin is left to hold the memory");
    }
}
