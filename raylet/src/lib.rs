//! Photon's raylet: the daemon on each node.
//!
//! Detects the node's resources (CPUs, memory, GPUs through cudarc or
//! `--num-gpus`, custom resources), owns the node's shared-memory object store,
//! registers with the head and keeps heartbeating, re-registering by itself
//! when the head restarts. Serves `photon.v1.Version` on its own port, which is
//! also what the head probes when a heartbeat stream breaks.
//!
//! Serves `photon.v1.Raylet`: objects pushed in, pulled out, and fetched from
//! other nodes (located through the head's object directory).
//!
//! Its worker pool (`worker_pool`) starts, reuses and reaps worker processes
//! and kills those over their memory limit with a reported reason; the actor
//! host (`actors`) runs the actors the head places here, holding their
//! resources and GPU instances.
//!
//! Task leases (`leases`) hold resources and hand drivers a worker to push
//! tasks to, or spill the request back to a node with room; workers register
//! their own gRPC service (`worker_directory`) and read and write objects
//! through shared memory (`local_objects`).
//!
//! What a job's workers print goes to the head for the job's log
//! (`worker_logs`); a job that ended has its workers killed here at the
//! head's request. With a metrics address it serves `/metrics`, `/healthz`
//! and `/readyz` over HTTP (`http`).

pub mod actors;
pub mod demand;
mod error;
pub mod gpu;
mod head_link;
mod http;
pub mod leases;
mod local_objects;
pub mod node_files;
pub mod owners;
pub mod packages;
pub mod procfs;
pub mod resources;
mod service;
pub mod transfer;
pub mod worker_directory;
pub mod worker_logs;
pub mod worker_pool;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use photon_object_store::{ObjectStore, StoreConfig};
use photon_proto::auth::RequireToken;
use photon_proto::v1::NodeInfo;
use photon_proto::v1::raylet_server::RayletServer;
use photon_proto::v1::version_server::VersionServer;
use photon_proto::{NodeId, VersionService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::{Error, Result};
pub use head_link::HeadLink;
pub use resources::{NodeResources, ResourceOverrides};

/// Configuration of a raylet.
#[derive(Debug, Clone)]
pub struct RayletConfig {
    /// The head's address, host:port.
    pub head_address: String,
    /// The cluster token.
    pub token: String,
    /// The host other nodes reach this raylet at.
    pub advertise_host: String,
    /// Resource flags.
    pub resources: ResourceOverrides,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// The node's object store.
    pub store: StoreConfig,
    /// Where worker logs go.
    pub log_dir: std::path::PathBuf,
    /// Where job binaries fetched from the head are cached.
    pub package_dir: std::path::PathBuf,
    /// Memory limit per worker process (killed above it, with the reason reported).
    pub worker_memory_limit: Option<u64>,
    /// An idle worker is stopped after this long unused.
    pub idle_worker_timeout: Duration,
    /// Ended workers' output files and unused cached packages are removed
    /// after this long.
    pub worker_files_retention: Duration,
    /// How long to try reaching the head at start before giving up.
    pub initial_connect_timeout: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0 picks
    /// one); `None`: not at all.
    pub metrics_address: Option<SocketAddr>,
    /// Serve `/metrics` without the token when bound beyond loopback.
    pub open_metrics: bool,
}

impl RayletConfig {
    /// Defaults for a raylet joining `head_address`.
    pub fn new(head_address: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            head_address: head_address.into(),
            token: token.into(),
            advertise_host: "127.0.0.1".into(),
            resources: ResourceOverrides::default(),
            labels: BTreeMap::new(),
            store: StoreConfig::default(),
            log_dir: std::env::temp_dir().join("photon-worker-logs"),
            package_dir: std::env::temp_dir().join("photon-packages"),
            worker_memory_limit: None,
            idle_worker_timeout: worker_pool::DEFAULT_IDLE_TIMEOUT,
            worker_files_retention: node_files::DEFAULT_RETENTION,
            initial_connect_timeout: Duration::from_secs(10),
            metrics_address: None,
            open_metrics: false,
        }
    }
}

/// How long a node declared dead waits before it rejoins.
const REJOIN_PAUSE: Duration = Duration::from_millis(500);

/// How long a stopping raylet waits for clients to finish their calls.
const SERVER_DRAIN: Duration = Duration::from_secs(2);

/// What a started raylet is, for the caller to print.
#[derive(Debug, Clone)]
pub struct RayletInfo {
    /// The node's id.
    pub node_id: NodeId,
    /// Where the raylet listens.
    pub address: String,
    /// The node's resources.
    pub resources: NodeResources,
    /// Where `/metrics` and the health probes are served, if anywhere.
    pub metrics_address: Option<String>,
}

/// Runs a raylet on `listener` until `shutdown` completes (then it tells the
/// head it is leaving) or the head refuses it. `started` is called once the
/// node is first registered.
///
/// A raylet the head declared dead (silent past the timeout: paused, or cut
/// off by the network) rejoins as a new node once it reaches the head again,
/// as Ray's raylets do not but a long-running cluster needs: the head has
/// already handled its objects and actors as lost, so it stops its workers,
/// drops its object store and starts over with a new node id on the same
/// address.
pub async fn run(
    config: RayletConfig,
    listener: TcpListener,
    started: impl FnOnce(&RayletInfo),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let bound = listener
        .local_addr()
        .map_err(|err| Error::Config(err.to_string()))?;
    let mut listener = listener;
    let mut started = Some(started);
    loop {
        let announce = started.take();
        let (outcome, stopping) = run_node(
            &config,
            listener,
            |info| {
                if let Some(announce) = announce {
                    announce(info);
                }
            },
            shutdown.as_mut(),
        )
        .await?;
        match outcome {
            Err(Error::DeclaredDead { head, message }) if !stopping => {
                warn!(%head, %message, "the head declared this node dead: rejoining as a new node (its objects and actors were lost)");
                // Not in a tight loop should the head refuse every new life at once.
                tokio::time::sleep(REJOIN_PAUSE).await;
                listener = match TcpListener::bind(bound).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        warn!(%bound, %err, "cannot listen on the node's address again: rejoining on a new port");
                        TcpListener::bind((bound.ip(), 0)).await.map_err(|err| {
                            Error::Config(format!("cannot listen on {}: {err}", bound.ip()))
                        })?
                    }
                };
            }
            outcome => return outcome,
        }
    }
}

/// One life of the node, under one node id: how it ended, and whether
/// `shutdown` had completed. `Err` when it could not start.
async fn run_node(
    config: &RayletConfig,
    listener: TcpListener,
    started: impl FnOnce(&RayletInfo),
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(Result<()>, bool)> {
    let resources = resources::detect(&config.resources)?;
    let grpc = photon_proto::tls::server().map_err(Error::Config)?;
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || ObjectStore::open(store_config))
        .await
        .expect("object store task panicked")?;
    let port = listener
        .local_addr()
        .map_err(|err| Error::Config(err.to_string()))?
        .port();
    let http_listener = match config.metrics_address {
        Some(at) => Some(
            photon_ops::bind(at, "--metrics-port")
                .await
                .map_err(Error::Config)?,
        ),
        None => None,
    };
    let metrics_address = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| photon_proto::net::host_port(&config.advertise_host, a.port()));
    let info = RayletInfo {
        node_id: NodeId::random(),
        address: photon_proto::net::host_port(&config.advertise_host, port),
        resources,
        metrics_address: metrics_address.clone(),
    };
    let node = NodeInfo {
        node_id: info.node_id.to_vec(),
        address: info.address.clone(),
        hostname: hostname(),
        total: info.resources.total.to_proto(),
        labels: config.labels.clone().into_iter().collect(),
        object_store_capacity: store.capacity(),
        pid: std::process::id(),
        metrics_address: metrics_address.unwrap_or_default(),
    };

    let stop = CancellationToken::new();
    let link = std::sync::Arc::new(HeadLink::new(&config.head_address, &config.token)?);
    let auth = RequireToken::new(config.token.clone());
    let mut pool_config =
        worker_pool::WorkerPoolConfig::new(info.node_id, info.address.clone(), &config.log_dir);
    pool_config.worker_memory_limit = config.worker_memory_limit;
    pool_config.idle_timeout = config.idle_worker_timeout;
    pool_config.token = config.token.clone();
    pool_config.head_address = config.head_address.clone();
    let pool = worker_pool::WorkerPool::start(pool_config);
    let actors = std::sync::Arc::new(actors::ActorHost::new(
        &info.resources.total,
        info.resources.gpu_ids.clone(),
        pool.clone(),
    ));
    let exit_watcher = tokio::spawn(actors.clone().watch_exits(info.node_id, link.clone()));
    let transfers = transfer::TransferService::new(
        store.clone(),
        info.node_id,
        link.clone(),
        config.token.clone(),
    );
    let dead_holders = tokio::spawn(local_objects::release_dead_holders(
        transfers.clients().clone(),
        store.clone(),
        stop.clone(),
    ));
    let workers = worker_directory::WorkerDirectory::start(pool.clone());
    let owners = std::sync::Arc::new(owners::Owners::default());
    let owner_watcher = tokio::spawn(owners.clone().report_deaths(pool.clone(), link.clone()));
    let leases = leases::LeaseManager::start(
        info.node_id,
        actors.clone(),
        pool.clone(),
        workers.clone(),
        link.clone(),
    );
    let readiness = photon_ops::Readiness::default();
    let http_server = http_listener.map(|listener| {
        let view = http::NodeView {
            store: store.clone(),
            actors: actors.clone(),
            leases: leases.clone(),
            pool: pool.clone(),
            fetched: transfers.fetched().clone(),
            node_id: info.node_id.to_string(),
        };
        tokio::spawn(photon_ops::serve(
            listener,
            http::router(view, readiness.clone()),
            Some(photon_ops::HttpAccess {
                token: config.token.clone(),
                open_metrics: config.open_metrics,
            }),
            stop.clone().cancelled_owned(),
        ))
    });
    let forwarder = std::sync::Arc::new(worker_logs::LogForwarder::new(
        pool.clone(),
        actors.clone(),
        link.clone(),
        config.log_dir.clone(),
        config.advertise_host.clone(),
    ));
    // Stopped after the workers, so its last pass reads all they printed.
    let forwarder_stop = CancellationToken::new();
    let log_forwarder = tokio::spawn({
        let forwarder = forwarder.clone();
        let stop = forwarder_stop.clone();
        async move { forwarder.run(stop).await }
    });
    let file_pruner = tokio::spawn(prune_node_files(
        pool.clone(),
        config.log_dir.clone(),
        config.package_dir.clone(),
        config.worker_files_retention,
        stop.clone(),
    ));
    let service = service::RayletService {
        transfers,
        actors: actors.clone(),
        leases,
        workers,
        owners,
        pool: pool.clone(),
        forwarder,
        packages: std::sync::Arc::new(packages::PackageCache::new(
            config.package_dir.clone(),
            link.clone(),
        )),
        node_id: info.node_id,
    };
    let raylet_service = RayletServer::new(service)
        .max_decoding_message_size(transfer::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(transfer::MAX_MESSAGE_SIZE);
    let server = tokio::spawn(
        grpc.initial_stream_window_size(transfer::STREAM_WINDOW)
            .initial_connection_window_size(transfer::CONNECTION_WINDOW)
            .max_frame_size(transfer::MAX_FRAME_SIZE)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                raylet_service,
                auth.clone(),
            ))
            .add_service(VersionServer::with_interceptor(VersionService, auth))
            .serve_with_incoming_shutdown(
                photon_proto::net::incoming_nodelay(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let registered = link.stay_registered(
        node,
        store.clone(),
        &actors,
        config.initial_connect_timeout,
        || {
            readiness.set(true);
            started(&info)
        },
        stop.clone(),
    );
    tokio::pin!(registered);
    let mut stopping = false;
    let outcome = tokio::select! {
        outcome = &mut registered => outcome,
        () = shutdown => {
            stopping = true;
            stop.cancel();
            registered.await
        }
    };
    stop.cancel();
    // Workers first: their connections (and calls waiting on leases) would
    // otherwise hold the server's graceful shutdown open.
    pool.shutdown().await;
    forwarder_stop.cancel();
    let mut server = server;
    let served = match tokio::time::timeout(SERVER_DRAIN, &mut server).await {
        Ok(served) => served.expect("raylet server task panicked"),
        Err(_) => {
            warn!("clients still connected after {SERVER_DRAIN:?}; stopping anyway");
            // Ended, not detached: it holds the listener and the store.
            server.abort();
            let _ = server.await;
            Ok(())
        }
    };
    exit_watcher.abort();
    owner_watcher.abort();
    let _ = dead_holders.await;
    let _ = file_pruner.await;
    // The forwarder's last pass sends what the workers printed before they ended.
    let _ = log_forwarder.await;
    if let Some(server) = http_server {
        let _ = server.await;
    }
    info!(address = %info.address, "raylet stopped");
    let ended = outcome.and_then(|()| {
        served.map_err(|source| Error::Serve {
            address: info.address.clone(),
            source,
        })
    });
    Ok((ended, stopping))
}

/// Every [`node_files::PERIOD`] until `stop`: the node's stale worker files
/// and packages go (see `node_files`).
async fn prune_node_files(
    pool: std::sync::Arc<worker_pool::WorkerPool>,
    log_dir: std::path::PathBuf,
    package_dir: std::path::PathBuf,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(node_files::PERIOD);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let live = pool.live();
        let ids = live.iter().map(|w| w.id).collect();
        // What live workers run and where: their programs and working directories.
        let programs = live
            .iter()
            .flat_map(|w| {
                let dir = w
                    .spec
                    .env
                    .get(packages::WORKING_DIR_ENV)
                    .map(std::path::PathBuf::from);
                std::iter::once(w.spec.program.clone()).chain(dir)
            })
            .collect();
        let (logs, packages) = (log_dir.clone(), package_dir.clone());
        let pruned = tokio::task::spawn_blocking(move || {
            node_files::prune(&logs, &ids, &packages, &programs, retention)
        })
        .await
        .unwrap_or_default();
        if pruned != node_files::Pruned::default() {
            info!(
                worker_files = pruned.worker_files,
                packages = pruned.packages,
                ?retention,
                "removed ended workers' output files and unused packages"
            );
        }
    }
}

/// This machine's host name (empty if it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}
