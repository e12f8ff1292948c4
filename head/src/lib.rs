//! Photon's head: the global control store.
//!
//! Owns the cluster's tables — nodes (resources, liveness), jobs, actors,
//! lineage and a named KV, persisted in redb under the session directory so
//! that a `kill -9` and restart of the head loses nothing registered — and
//! the object directory (in memory, re-reported by raylets). Places actors
//! (best fit for GPUs) and restarts them per `max_restarts` when their worker
//! or node dies.
//!
//! Runs submitted jobs (`supervisor`): their programs and working
//! directories arrive as content-hashed packages (`packages`), their drivers
//! run on the head node with their output in the job's log, and everything a
//! job leaves running is ended with it. Serves a status page, Prometheus
//! metrics and health probes over HTTP (`http`). Decides node liveness: a node is dead when its
//! heartbeats stop for `node_timeout` (default 3 s), or at once when its
//! heartbeat stream breaks and a TCP probe of its raylet fails.
//!
//! It does not schedule work or touch objects' bytes: raylets do.

mod actors;
mod borrows;
mod certificates;
mod drivers;
mod error;
mod http;
mod job_service;
mod jobs;
mod lineage;
mod nodes;
mod objects;
mod owners;
mod packages;
mod persist;
mod placement;
mod placement_groups;
mod retention;
mod service;
mod supervisor;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use photon_proto::VersionService;
use photon_proto::auth::RequireToken;
use photon_proto::v1::head_server::HeadServer;
use photon_proto::v1::jobs_server::JobsServer;
use photon_proto::v1::version_server::VersionServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use certificates::{
    CA_FILE, CertificateAuthority, IssuedCertificate, NODE_CERT_FILE, NODE_KEY_FILE,
    SESSION_TLS_DIR, store_node_files,
};
pub use error::{Error, Result};
pub use persist::Persistence;
pub use retention::JobRetention;
pub use supervisor::env as job_env;

use crate::actors::ActorTable;
use crate::job_service::JobService;
use crate::jobs::JobTable;
use crate::lineage::LineageTable;
use crate::nodes::NodeTable;
use crate::objects::ObjectDirectory;
use crate::packages::Packages;
use crate::service::{HeadService, HeadState};

/// How often the failure detector looks for silent nodes.
const DETECTOR_PERIOD: Duration = Duration::from_millis(100);
/// How often waiting actors are retried.
const PLACEMENT_PERIOD: Duration = Duration::from_millis(200);

/// Configuration of a head.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// Where the head keeps its database (`head.redb`).
    pub data_dir: PathBuf,
    /// The cluster token every RPC must carry.
    pub token: String,
    /// How often raylets heartbeat (told to them at registration).
    pub heartbeat_interval: Duration,
    /// Silence after which a node is declared dead.
    pub node_timeout: Duration,
    /// Where to serve the status page, `/metrics` and health probes over
    /// HTTP (port 0 picks one); `None`: not at all.
    pub metrics_address: Option<SocketAddr>,
    /// The host other machines reach this head's HTTP side at (shown in
    /// `photon status`); `None`: the address it is bound to.
    pub advertise_host: Option<String>,
    /// Serve `/metrics` without the token when bound beyond loopback (the
    /// status page and job logs always need it there).
    pub open_metrics: bool,
    /// Which finished jobs (records, logs, packages) are kept.
    pub job_retention: JobRetention,
    /// The session CA of `--tls auto`, which issues joining nodes their
    /// certificates; `None`: nodes bring their own (or TLS is off).
    pub certificate_authority: Option<std::sync::Arc<CertificateAuthority>>,
}

impl HeadConfig {
    /// Defaults: heartbeats every 500 ms, dead after 3 s.
    pub fn new(data_dir: impl Into<PathBuf>, token: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            token: token.into(),
            heartbeat_interval: Duration::from_millis(500),
            node_timeout: Duration::from_secs(3),
            metrics_address: None,
            advertise_host: None,
            open_metrics: false,
            job_retention: JobRetention::default(),
            certificate_authority: None,
        }
    }
}

/// Runs the head on `listener` until `shutdown` completes, then stops
/// accepting, cancels its background tasks and waits for them.
pub async fn run(
    config: HeadConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut grpc = photon_proto::tls::server().map_err(Error::Tls)?;
    let data_dir = config.data_dir.clone();
    let (
        persistence,
        (records, actor_records, lineage_records, job_records),
        (cluster_id, attached_drivers, group_records),
    ) = tokio::task::spawn_blocking(move || {
        let persistence = Persistence::open(&data_dir)?;
        let records = persistence.load_nodes()?;
        let actor_records = persistence.load_actors()?;
        let lineage_records = persistence.load_lineage()?;
        let job_records = persistence.load_jobs()?;
        let attached_drivers = persistence.load_drivers()?;
        let cluster_id = persistence.cluster_id()?;
        let group_records = persistence.load_placement_groups()?;
        Ok::<_, Error>((
            persistence,
            (records, actor_records, lineage_records, job_records),
            (cluster_id, attached_drivers, group_records),
        ))
    })
    .await
    .expect("head store task panicked")?;
    let http_listener = match config.metrics_address {
        Some(at) => Some(
            photon_ops::bind(at, "--metrics-port")
                .await
                .map_err(|message| Error::Http { message })?,
        ),
        None => None,
    };
    let metrics_address = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or_else(String::new, |a| match &config.advertise_host {
            Some(host) => photon_proto::net::host_port(host, a.port()),
            None => a.to_string(),
        });
    let nodes = NodeTable::default();
    let restored = records.len();
    nodes.restore(records);
    let state = Arc::new(HeadState {
        nodes,
        objects: ObjectDirectory::default(),
        persistence,
        cluster_id,
        heartbeat_interval: config.heartbeat_interval,
        started: Instant::now(),
        tasks: TaskTracker::new(),
        cancel: CancellationToken::new(),
        actors: ActorTable::default(),
        placement_groups: Default::default(),
        lineage: LineageTable::default(),
        placement: tokio::sync::Mutex::new(()),
        raylets: Default::default(),
        token: config.token.clone(),
        unconfirmed_actors: Default::default(),
        jobs: JobTable::default(),
        packages: Packages::new(&config.data_dir),
        data_dir: config.data_dir.clone(),
        address: driver_address(&address),
        metrics_address,
        drivers: Default::default(),
        job_retention: config.job_retention,
        certificate_authority: config.certificate_authority.clone(),
        owners: Default::default(),
        borrows: Default::default(),
    });
    state.jobs.restore(job_records.clone());
    state.actors.restore(actor_records);
    state.placement_groups.restore(group_records);
    state.lineage.restore(lineage_records);
    *state.unconfirmed_actors.lock().expect("fresh lock") = state.actors.alive_ids();
    info!(%address, restored_nodes = restored, cluster = %state.cluster_id, "head started");
    // In the background: adopting jobs may call raylets, and the server
    // (and its health probes) should not wait for that.
    let resuming = state.clone();
    state
        .tasks
        .spawn(async move { resuming.resume_jobs(job_records).await });
    state.jobs.reserve(attached_drivers.iter().copied());
    state
        .tasks
        .spawn(drivers::end_jobs_of_drivers_gone_while_down(
            state.clone(),
            attached_drivers,
        ));
    let readiness = photon_ops::Readiness::default();
    if let Some(listener) = http_listener {
        info!(address = %state.metrics_address, "status page and metrics served");
        let router = http::router(state.clone(), readiness.clone());
        let access = Some(photon_ops::HttpAccess {
            token: config.token.clone(),
            open_metrics: config.open_metrics,
        });
        state.tasks.spawn(photon_ops::serve(
            listener,
            router,
            access,
            state.cancel.clone().cancelled_owned(),
        ));
    }

    let detector = state
        .tasks
        .spawn(detect_failures(state.clone(), config.node_timeout));
    state.tasks.spawn(place_periodically(state.clone()));
    state.tasks.spawn(retention::enforce(state.clone()));
    let auth = RequireToken::new(config.token.clone());
    let service = HeadService {
        state: state.clone(),
    };
    let jobs = JobService {
        state: state.clone(),
    };
    readiness.set(true);
    let served = grpc
        .add_service(HeadServer::with_interceptor(service, auth.clone()))
        .add_service(JobsServer::with_interceptor(jobs, auth.clone()))
        .add_service(VersionServer::with_interceptor(VersionService, auth))
        .serve_with_incoming_shutdown(photon_proto::net::incoming_nodelay(listener), {
            // Cancelling at once ends long streams (`job logs --follow`),
            // which graceful shutdown would otherwise wait for, and stops jobs.
            let cancel = state.cancel.clone();
            async move {
                shutdown.await;
                cancel.cancel();
            }
        })
        .await;
    // Fence (stopped accepting) → cancel → wait.
    state.cancel.cancel();
    state.tasks.close();
    drop(detector);
    state.tasks.wait().await;
    info!(%address, "head stopped");
    served.map_err(|source| Error::Serve { address, source })
}

/// The head's address as a driver on this node dials it: a wildcard listen
/// address becomes loopback.
fn driver_address(listening: &str) -> String {
    match listening.parse::<SocketAddr>() {
        Ok(at) if at.ip().is_unspecified() => format!("127.0.0.1:{}", at.port()),
        _ => listening.to_string(),
    }
}

async fn detect_failures(state: Arc<HeadState>, timeout: Duration) {
    let mut ticks = tokio::time::interval(DETECTOR_PERIOD);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (id, silent_for) in state.nodes.overdue(timeout) {
            let reason = format!(
                "missed heartbeats for {:.1} s (timeout {:.1} s)",
                silent_for.as_secs_f64(),
                timeout.as_secs_f64()
            );
            state.mark_dead(id, reason).await;
        }
    }
}

/// Retries waiting actors as resources free up (heartbeats bring new
/// availability); separate from failure detection so a slow raylet never
/// delays it.
async fn place_periodically(state: Arc<HeadState>) {
    let mut ticks = tokio::time::interval(PLACEMENT_PERIOD);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        state.place_waiting().await;
    }
}
