//! Objects between nodes: the raylet's `photon.v1.Raylet` service and its
//! client side. Objects move as streams of 2 MiB chunks written straight into
//! the receiver's shared memory; the sender's chunks borrow its store's pages
//! (no copy before encoding). Concurrent fetches of one object share one transfer.

use std::collections::HashMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use photon_object_store::{CopyKind, ObjectStore, ObjectView};
use photon_proto::auth::AttachToken;
use photon_proto::v1::raylet_client::RayletClient;
use photon_proto::v1::{
    DeleteObjectReply, DeleteObjectRequest, FetchObjectReply, FetchObjectRequest, ObjectChunk,
    PullObjectRequest, PushObjectReply,
};
use photon_proto::{NodeId, ObjectId};
use tokio::sync::{OnceCell, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::head_link::HeadLink;

/// Bytes per chunk.
pub const CHUNK_SIZE: usize = 2 << 20;
/// Largest gRPC message a raylet accepts: a chunk plus headroom.
pub const MAX_MESSAGE_SIZE: usize = CHUNK_SIZE + (64 << 10);
/// HTTP/2 flow-control windows large enough to keep a loopback or LAN link busy.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Connection-level window.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// HTTP/2 frame size we accept: h2's default of 16 KiB means 128 frames a chunk.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;

/// A client of another raylet.
pub type PeerClient = RayletClient<InterceptedService<Channel, AttachToken>>;

/// Connects to the raylet at `address` (host:port).
pub fn connect(address: &str, token: &str) -> Result<PeerClient, String> {
    let endpoint = photon_proto::tls::endpoint(address)
        .map_err(|err| format!("raylet {err}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE);
    let attach = AttachToken::new(token)?;
    Ok(
        RayletClient::with_interceptor(endpoint.connect_lazy(), attach)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
}

/// Chunk ranges of an object of `size` bytes.
fn chunk_ranges(size: usize) -> impl Iterator<Item = Range<usize>> {
    (0..size)
        .step_by(CHUNK_SIZE)
        .map(move |start| start..(start + CHUNK_SIZE).min(size))
}

/// Uploads `data` as object `id` into the raylet's store (primary copy).
pub async fn push_object(
    client: &mut PeerClient,
    id: ObjectId,
    data: Bytes,
) -> Result<u64, Status> {
    let total = data.len() as u64;
    let chunks: Vec<ObjectChunk> = chunk_ranges(data.len())
        .map(|range| ObjectChunk {
            object_id: id.to_vec(),
            total_size: total,
            offset: range.start as u64,
            data: data.slice(range),
        })
        .collect();
    Ok(client
        .push_object(tokio_stream::iter(chunks))
        .await?
        .into_inner()
        .size)
}

/// Downloads object `id` from the raylet.
pub async fn pull_object(client: &mut PeerClient, id: ObjectId) -> Result<Vec<u8>, Status> {
    let mut stream = client
        .pull_object(PullObjectRequest {
            object_id: id.to_vec(),
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if data.is_empty() {
            data.reserve_exact(chunk.total_size as usize);
        }
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// Part of a pinned object, as `Bytes` without copying.
struct ViewSlice {
    view: Arc<ObjectView>,
    range: Range<usize>,
}

impl AsRef<[u8]> for ViewSlice {
    fn as_ref(&self) -> &[u8] {
        &self.view[self.range.clone()]
    }
}

pub(crate) fn store_status(err: photon_object_store::Error) -> Status {
    use photon_object_store::Error;
    match err {
        Error::NotFound { .. } => Status::not_found(err.to_string()),
        Error::AlreadyExists { .. } => Status::already_exists(err.to_string()),
        Error::OutOfMemory { .. } => Status::resource_exhausted(err.to_string()),
        Error::ZeroSize { .. } | Error::TooLarge { .. } => {
            Status::invalid_argument(err.to_string())
        }
        _ => Status::internal(err.to_string()),
    }
}

/// Writes a chunk stream into a new object of this store; returns its id and size.
/// On any error the half-written object is aborted (its writer is dropped).
async fn receive<S>(
    store: &ObjectStore,
    mut chunks: S,
    copy: CopyKind,
    expected: Option<ObjectId>,
) -> Result<(ObjectId, u64), Status>
where
    S: Stream<Item = Result<ObjectChunk, Status>> + Unpin,
{
    let first = chunks
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty object stream"))??;
    let id = ObjectId::from_slice(&first.object_id)?;
    if let Some(expected) = expected
        && expected != id
    {
        return Err(Status::internal(format!(
            "asked for object {expected}, received {id}"
        )));
    }
    let size = first.total_size;
    let creating = store.clone();
    let mut writer = tokio::task::spawn_blocking(move || creating.create_copy(id, size, copy))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
    let mut received = 0u64;
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        if chunk.offset != received || chunk.offset + chunk.data.len() as u64 > size {
            return Err(Status::invalid_argument(format!(
                "object {id}: chunk at {}+{} does not follow byte {received} of {size}",
                chunk.offset,
                chunk.data.len()
            )));
        }
        let start = chunk.offset as usize;
        writer[start..start + chunk.data.len()].copy_from_slice(&chunk.data);
        received += chunk.data.len() as u64;
        next = chunks.next().await.transpose()?;
    }
    if received != size {
        return Err(Status::data_loss(format!(
            "object {id}: stream ended after {received} of {size} bytes"
        )));
    }
    writer.seal().map_err(store_status)?;
    Ok((id, size))
}

/// One fetch in flight: every concurrent caller awaits the same outcome (the size).
type SharedFetch = Arc<OnceCell<Result<u64, Status>>>;

/// The raylet's object service.
pub struct TransferService {
    store: ObjectStore,
    node_id: NodeId,
    head: Arc<HeadLink>,
    token: String,
    fetches: Mutex<HashMap<ObjectId, SharedFetch>>,
    /// One connection per peer raylet, reused: a fresh HTTP/2 connection
    /// starts with cold flow-control windows.
    peers: Mutex<HashMap<String, PeerClient>>,
    clients: Arc<crate::local_objects::LocalClients>,
    fetched: Arc<FetchCounts>,
}

/// Objects this node pulled from other nodes since it started.
#[derive(Debug, Default)]
pub(crate) struct FetchCounts {
    /// Objects fetched.
    pub objects: std::sync::atomic::AtomicU64,
    /// Their bytes.
    pub bytes: std::sync::atomic::AtomicU64,
}

impl TransferService {
    /// The service for this node.
    pub fn new(store: ObjectStore, node_id: NodeId, head: Arc<HeadLink>, token: String) -> Self {
        Self {
            store,
            node_id,
            head,
            token,
            fetches: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            clients: Arc::new(crate::local_objects::LocalClients::default()),
            fetched: Arc::default(),
        }
    }

    /// What this node has fetched from others (for `/metrics`).
    pub(crate) fn fetched(&self) -> &Arc<FetchCounts> {
        &self.fetched
    }

    pub(crate) fn store(&self) -> &ObjectStore {
        &self.store
    }

    pub(crate) fn clients(&self) -> &Arc<crate::local_objects::LocalClients> {
        &self.clients
    }

    fn peer(&self, address: &str) -> Result<PeerClient, Status> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(address) {
            return Ok(client.clone());
        }
        let client = connect(address, &self.token).map_err(Status::invalid_argument)?;
        peers.insert(address.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) async fn announce(&self, id: ObjectId) {
        if let Err(status) = self.head.update_location(id, self.node_id, true).await {
            warn!(object = %id, error = status.message(), "cannot record the object's location at the head");
        }
    }

    /// Pulls `id` from `source` (or a holder the head names) into this store.
    async fn transfer(&self, id: ObjectId, source: String) -> Result<u64, Status> {
        let sources = if source.is_empty() {
            let holders = self.head.locations(id).await?;
            let others: Vec<String> = holders
                .into_iter()
                .filter(|(node, _)| *node != self.node_id)
                .map(|(_, address)| address)
                .collect();
            if others.is_empty() {
                return Err(Status::not_found(format!(
                    "object {id}: no live node holds a copy"
                )));
            }
            others
        } else {
            vec![source]
        };
        let mut last_error = None;
        for address in sources {
            let mut peer = self.peer(&address)?;
            let pulled = async {
                let stream = peer
                    .pull_object(PullObjectRequest {
                        object_id: id.to_vec(),
                    })
                    .await?
                    .into_inner();
                receive(&self.store, stream, CopyKind::Secondary, Some(id)).await
            }
            .await;
            match pulled {
                Ok((_, size)) => {
                    debug!(object = %id, from = %address, size, "object fetched");
                    use std::sync::atomic::Ordering::Relaxed;
                    self.fetched.objects.fetch_add(1, Relaxed);
                    self.fetched.bytes.fetch_add(size, Relaxed);
                    self.announce(id).await;
                    return Ok(size);
                }
                Err(status) => {
                    warn!(object = %id, from = %address, error = status.message(), "fetch failed");
                    last_error = Some(Status::new(
                        status.code(),
                        format!("fetching from {address}: {}", status.message()),
                    ));
                }
            }
        }
        Err(last_error.expect("at least one source was tried"))
    }
}

/// A stream of object chunks.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ObjectChunk, Status>> + Send>>;

impl TransferService {
    /// `photon.v1.Raylet/PushObject`.
    pub async fn push_object(
        &self,
        request: Request<Streaming<ObjectChunk>>,
    ) -> Result<Response<PushObjectReply>, Status> {
        let (id, size) =
            receive(&self.store, request.into_inner(), CopyKind::Primary, None).await?;
        self.announce(id).await;
        Ok(Response::new(PushObjectReply { size }))
    }

    /// `photon.v1.Raylet/PullObject`.
    pub async fn pull_object(
        &self,
        request: Request<PullObjectRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        let store = self.store.clone();
        let view = tokio::task::spawn_blocking(move || store.get(id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)?;
        let view = Arc::new(view);
        let total = view.len() as u64;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            for range in chunk_ranges(view.len()) {
                let chunk = ObjectChunk {
                    object_id: id.to_vec(),
                    total_size: total,
                    offset: range.start as u64,
                    data: Bytes::from_owner(ViewSlice {
                        view: view.clone(),
                        range,
                    }),
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    return; // the puller went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    /// `photon.v1.Raylet/FetchObject`.
    pub async fn fetch_object(
        &self,
        request: Request<FetchObjectRequest>,
    ) -> Result<Response<FetchObjectReply>, Status> {
        let request = request.into_inner();
        let id = ObjectId::from_slice(&request.object_id)?;
        let cell = {
            let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(size) = self.store.object_size(id) {
                return Ok(Response::new(FetchObjectReply {
                    size,
                    transferred: false,
                }));
            }
            fetches.entry(id).or_default().clone()
        };
        let mut ran_here = false;
        let outcome = cell
            .get_or_init(|| {
                ran_here = true;
                self.transfer(id, request.source_address)
            })
            .await
            .clone();
        if ran_here {
            self.fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        Ok(Response::new(FetchObjectReply {
            size: outcome?,
            transferred: ran_here,
        }))
    }

    /// `photon.v1.Raylet/DeleteObject`.
    pub async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectReply>, Status> {
        let id = ObjectId::from_slice(&request.into_inner().object_id)?;
        // An unsealed object is one whose writer gave up: aborted.
        self.store.discard(id).map_err(store_status)?;
        self.clients.forget_writer(id);
        if let Err(status) = self.head.update_location(id, self.node_id, false).await {
            warn!(object = %id, error = status.message(), "cannot remove the object's location at the head");
        }
        Ok(Response::new(DeleteObjectReply {}))
    }
}
