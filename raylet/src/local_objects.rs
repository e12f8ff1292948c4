//! Objects written and read by local processes (drivers and workers) through
//! shared memory: `CreateObject` hands out a writable descriptor of a fresh
//! object, the client maps and fills it, `SealObject` publishes it and records
//! this node in the head's directory. `GetObject` pins a sealed object
//! (pulling it from another node first if asked) and hands out a read-only
//! descriptor until `ReleaseObject`.

use std::collections::HashMap;
use std::sync::Mutex;

use photon_object_store::{ObjectStore, ObjectView};
use photon_proto::ObjectId;
use photon_proto::v1::{
    CreateObjectRequest, FetchObjectRequest, GetObjectRequest, ObjectDescriptor,
    ReleaseObjectRequest, SealObjectRequest,
};
use tonic::{Request, Status};

use crate::transfer::{TransferService, store_status};

/// Sealed objects pinned for local readers (one view per outstanding `GetObject`).
#[derive(Default)]
pub struct Pins(Mutex<HashMap<ObjectId, Vec<ObjectView>>>);

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Vec<ObjectView>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
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
        Ok(ObjectDescriptor::from(&descriptor))
    }

    /// `SealObject`: the object becomes readable and the head learns it is here.
    pub async fn seal_object(&self, request: Request<SealObjectRequest>) -> Result<(), Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        blocking(self.store(), move |store| store.seal(id)).await?;
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
        self.pins().lock().entry(id).or_default().push(view);
        Ok(descriptor)
    }

    /// `ReleaseObject`: drops one pin taken by `GetObject`.
    pub fn release_object(&self, request: Request<ReleaseObjectRequest>) -> Result<(), Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        let mut pins = self.pins().lock();
        let views = pins
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("object {id} is not pinned here")))?;
        views.pop();
        if views.is_empty() {
            pins.remove(&id);
        }
        Ok(())
    }
}
