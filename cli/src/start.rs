//! `photon start`: a head (with a raylet unless `--no-raylet`) or a raylet
//! joining a head. With `--block` it runs in the foreground until SIGTERM or
//! SIGINT; without, it starts itself detached and returns once ready.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use photon_head::HeadConfig;
use photon_object_store::StoreConfig;
use photon_proto::net::host_port;
use photon_raylet::{RayletConfig, RayletInfo, ResourceOverrides};
use tokio::net::TcpListener;

use crate::advertise;
use crate::session::{self, ClusterFile, ConnectionFile, PidFile};
use crate::tls::{self, NodeTlsArgs};

/// Default port of a head.
pub const DEFAULT_HEAD_PORT: u16 = 6380;
/// Default port of a head's status page and metrics (Ray's dashboard port).
pub const DEFAULT_METRICS_PORT: u16 = 8265;
/// How long a detached start waits for its process to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `photon start`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Start a head node.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// Join the head at HOST:PORT as a raylet.
    #[arg(long, required_unless_present_any = ["head", "connection_file"])]
    address: Option<String>,
    /// Join with the head's connection file (its session dir's
    /// `connection.json`: address, token and, with TLS, the CA): the one
    /// file another machine needs.
    #[arg(long, value_name = "PATH", conflicts_with = "head")]
    connection_file: Option<PathBuf>,
    #[command(flatten)]
    tls: NodeTlsArgs,
    /// Interface to listen on. Loopback by default: set it to expose the node.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The address other nodes dial for this node (IP or DNS name). Default:
    /// `--host` when it is one address; for a wildcard `--host` (0.0.0.0),
    /// the address of the interface that routes to the head.
    #[arg(long, value_name = "HOST")]
    advertise_address: Option<String>,
    /// Head port (0 picks a free one). Raylets always pick a free port.
    #[arg(long, default_value_t = DEFAULT_HEAD_PORT)]
    port: u16,
    /// Session directory. A head's holds its database, token and logs
    /// (reusing one restarts that cluster's head with its state); a
    /// raylet's holds its workers' logs, cached packages and spilled objects
    /// (default: under `$PHOTON_HOME`).
    #[arg(long)]
    session_dir: Option<PathBuf>,
    /// Run only the head's control plane, no raylet on this node.
    #[arg(long, requires = "head")]
    no_raylet: bool,
    /// Logical CPUs of this node (default: detected).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// GPUs of this node (default: discovered through the CUDA driver).
    #[arg(long)]
    num_gpus: Option<u32>,
    /// Custom resources as JSON, e.g. '{"accel": 2}'.
    #[arg(long, value_name = "JSON")]
    resources: Option<String>,
    /// Shared memory for the object store, in bytes (default 30% of RAM).
    #[arg(long, value_name = "BYTES")]
    object_store_memory: Option<u64>,
    /// Seconds an idle worker process is kept for reuse before the node
    /// stops it.
    #[arg(long, value_name = "SECONDS",
          default_value_t = photon_raylet::worker_pool::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_worker_timeout: u64,
    /// Hours a node keeps an ended worker's output files and a cached job
    /// binary no worker has used (the head has the job's log; a package is
    /// fetched again when needed).
    #[arg(long, value_name = "HOURS",
          default_value_t = photon_raylet::node_files::DEFAULT_RETENTION.as_secs_f64() / 3600.0)]
    worker_files_retention_hours: f64,
    /// File holding the cluster token. Joining: default PHOTON_TOKEN, else
    /// this machine's head. A head: sets its token (e.g. a mounted
    /// Kubernetes Secret), else PHOTON_TOKEN, else the session dir's, else a
    /// new one. The token itself is never a flag: argv is public.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Finished jobs the head keeps (records, logs, directories, packages);
    /// older ones are deleted.
    #[arg(long, value_name = "COUNT", requires = "head",
          default_value_t = photon_head::JobRetention::default().keep)]
    job_retention_count: usize,
    /// Hours a finished job is kept at most.
    #[arg(long, value_name = "HOURS", requires = "head",
          default_value_t = photon_head::JobRetention::default().max_age.as_secs_f64() / 3600.0)]
    job_retention_hours: f64,
    /// Silence after which the head declares a node dead, in milliseconds.
    #[arg(long, default_value_t = 3000, requires = "head")]
    node_timeout_ms: u64,
    /// HTTP port for the status page (head), `/metrics`, `/healthz` and
    /// `/readyz`; 0 picks a free one. Heads serve on 8265 unless given;
    /// raylets serve only when given.
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Serve `/metrics` without the token when `--host` is beyond loopback
    /// (for a Prometheus without it). The status page and job logs always
    /// need the token there; `/healthz` and `/readyz` never do.
    #[arg(long)]
    open_metrics: bool,
    /// Stay in the foreground until SIGTERM/SIGINT.
    #[arg(long)]
    block: bool,
}

/// Runs `photon start`.
pub fn run(args: StartArgs) -> anyhow::Result<()> {
    // Check flags before anything starts, so a typo never leaves a half-started node.
    let overrides = resource_overrides(&args)?;
    if args.block {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        return runtime.block_on(run_blocking(args, overrides));
    }
    start_detached(&args)
}

fn resource_overrides(args: &StartArgs) -> anyhow::Result<ResourceOverrides> {
    let custom: BTreeMap<String, f64> = match &args.resources {
        None => BTreeMap::new(),
        Some(json) => serde_json::from_str(json).with_context(|| {
            format!("--resources {json:?} is not a JSON object of names to numbers, e.g. '{{\"accel\": 2}}'")
        })?,
    };
    let overrides = ResourceOverrides {
        num_cpus: args.num_cpus,
        num_gpus: args.num_gpus,
        memory: None,
        custom,
    };
    overrides.validate()?;
    Ok(overrides)
}

/// Re-runs this command with `--block`, detached, and waits until it is ready.
fn start_detached(args: &StartArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let logs = session::home()?.join("logs");
    session::create_private_dir(&logs)?;
    let role = if args.head { "head" } else { "raylet" };
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let log_path = logs.join(format!("{role}-{nanos}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg("--block")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the detached photon process")?;
    let pid = child.id();
    let started = Instant::now();
    loop {
        if let Some(ready) = PidFile::read(pid) {
            println!(
                "photon {} started: pid {pid}, serving {}",
                ready.role, ready.address
            );
            if args.head {
                println!(
                    "join more nodes:   photon start --address {}",
                    ready.address
                );
                if let Some(cluster) = ClusterFile::read()?.filter(|cluster| cluster.pid == pid) {
                    println!(
                        "  from elsewhere:  photon start --connection-file {} (copy the file \
                         there: it holds the token)",
                        cluster.session_dir.join(ConnectionFile::NAME).display()
                    );
                }
                println!("cluster status:    photon status");
            }
            println!("log:               {}", log_path.display());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("photon start failed ({status}):\n{}", log.trim_end());
        }
        if started.elapsed() > READY_TIMEOUT {
            // Leave nothing half-started behind.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "photon start did not become ready within {READY_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socket_address(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    format!("{host}:{port}")
        .parse()
        .with_context(|| format!("--host {host:?} is not an IP address"))
}

async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let address = socket_address(host, port)?;
    TcpListener::bind(address).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "port {port} on {host} is in use (another photon head?): stop it or choose --port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {address}: {err}")
        }
    })
}

/// Says, once, that a node reachable from other machines talks in the clear.
fn warn_if_exposed(host: &str) {
    let exposed = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_loopback());
    if exposed && photon_proto::tls::current().is_none() {
        eprintln!(
            "warning: --host {host} exposes this node beyond loopback without TLS: RPCs, objects \
             and the cluster token cross the network in the clear; keep it on a private network \
             or use --tls auto"
        );
    }
}

async fn run_blocking(args: StartArgs, overrides: ResourceOverrides) -> anyhow::Result<()> {
    let stop = tokio_util_shutdown();
    let pid = std::process::id();
    let store = StoreConfig {
        capacity: args
            .object_store_memory
            .unwrap_or_else(photon_object_store::default_capacity),
        ..StoreConfig::default()
    };
    let result = if args.head {
        run_head(&args, overrides, store, stop).await
    } else {
        let connection = session::connection_file(args.connection_file.as_deref())?;
        let head = session::resolve_address(args.address.clone(), connection.as_ref())?;
        let token = session::resolve_token(args.token_file.as_deref(), connection.as_ref())?;
        let advertise =
            advertise::advertised_host(args.advertise_address.as_deref(), &args.host, Some(&head))?;
        // Without a session dir, the node's key lives only as long as this
        // process: removed however it returns.
        let (tls_dir, _removed_at_exit) = match &args.session_dir {
            Some(dir) => (dir.join(photon_head::SESSION_TLS_DIR), None),
            None => {
                let dir = session::home()?.join(format!("tls-{pid}"));
                (dir.clone(), Some(RemoveOnDrop(dir)))
            }
        };
        let node_tls = tls::joining_node(
            &args.tls,
            connection.as_ref(),
            &head,
            &token,
            &tls::node_hosts(&advertise, &args.host),
            &tls_dir,
        )
        .await;
        photon_proto::tls::configure(node_tls?);
        warn_if_exposed(&args.host);
        let mut config = RayletConfig::new(head, token);
        config.advertise_host = advertise;
        config.resources = overrides;
        config.store = store;
        config.idle_worker_timeout = Duration::from_secs(args.idle_worker_timeout);
        config.worker_files_retention = hours(
            args.worker_files_retention_hours,
            "--worker-files-retention-hours",
        )?;
        match &args.session_dir {
            Some(dir) => {
                session::create_private_dir(dir)?;
                config.log_dir = dir.join("logs");
                config.package_dir = dir.join("packages");
                config.store.fallback_root = dir.clone();
            }
            None => {
                let home = session::home()?;
                config.log_dir = home.join(format!(
                    "{}{pid}",
                    photon_raylet::node_files::LOG_DIR_PREFIX
                ));
                config.package_dir = home.join("packages");
            }
        }
        config.open_metrics = args.open_metrics;
        config.metrics_address = args
            .metrics_port
            .map(|port| socket_address(&args.host, port))
            .transpose()?;
        let listener = bind(&args.host, 0).await?;
        photon_raylet::run(
            config,
            listener,
            |info| announce_raylet(info, "raylet", &info.address),
            stop.cancelled_owned(),
        )
        .await
        .map_err(anyhow::Error::from)
    };
    PidFile::forget(pid);
    result
}

/// A directory removed when this is dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the raylet and records this process for `photon stop`; `serving` is
/// the address to join (the head's, on a head node).
fn announce_raylet(info: &RayletInfo, role: &str, serving: &str) {
    println!(
        "raylet {} at {} with {}{}",
        info.node_id,
        info.address,
        info.resources.total,
        if info.resources.gpus.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                info.resources
                    .gpus
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if let Err(err) = PidFile::this_process(role, serving).and_then(|record| record.write()) {
        eprintln!("warning: {err:#}");
    }
}

async fn run_head(
    args: &StartArgs,
    overrides: ResourceOverrides,
    store: StoreConfig,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let session_dir = match &args.session_dir {
        Some(dir) => dir.clone(),
        None => session::home()?.join(format!("session-{}-{}", unix_secs(), std::process::id())),
    };
    session::create_private_dir(&session_dir)?;
    let token = match session::given_token(args.token_file.as_deref())? {
        // Stored too, so local `photon` commands find it in the session dir.
        Some(token) => {
            session::write_private(&session_dir.join("token"), token.as_bytes())?;
            token
        }
        None => session::session_token(&session_dir)?,
    };
    let max_age = hours(args.job_retention_hours, "--job-retention-hours")?;
    let advertise =
        advertise::advertised_host(args.advertise_address.as_deref(), &args.host, None)?;
    let (node_tls, authority) = tls::head_node(
        &args.tls,
        &session_dir,
        &tls::node_hosts(&advertise, &args.host),
    )?;
    let ca_certificate = match &node_tls {
        Some(tls) => Some(
            std::fs::read_to_string(&tls.files().ca)
                .with_context(|| format!("cannot read {}", tls.files().ca.display()))?,
        ),
        None => None,
    };
    photon_proto::tls::configure(node_tls);
    warn_if_exposed(&args.host);
    let listener = bind(&args.host, args.port).await?;
    let address = host_port(&advertise, listener.local_addr()?.port());
    let connection_path = session_dir.join(ConnectionFile::NAME);
    ConnectionFile {
        address: address.clone(),
        token: token.clone(),
        ca_certificate,
    }
    .write(&connection_path)
    .map_err(anyhow::Error::msg)?;
    let mut config = HeadConfig::new(&session_dir, token.clone());
    config.certificate_authority = authority;
    config.node_timeout = Duration::from_millis(args.node_timeout_ms);
    config.job_retention = photon_head::JobRetention {
        keep: args.job_retention_count,
        max_age,
    };
    let metrics_port = args.metrics_port.unwrap_or(DEFAULT_METRICS_PORT);
    config.metrics_address = Some(socket_address(&args.host, metrics_port)?);
    config.open_metrics = args.open_metrics;
    config.advertise_host = Some(advertise.clone());
    // The head stops after the raylet, so the raylet's goodbye reaches it.
    let head_stop = tokio_util::sync::CancellationToken::new();
    let mut head = tokio::spawn(photon_head::run(
        config,
        listener,
        head_stop.clone().cancelled_owned(),
    ));

    ClusterFile {
        address: address.clone(),
        session_dir: session_dir.clone(),
        pid: std::process::id(),
    }
    .write()?;
    println!("head at {address}, session {}", session_dir.display());
    println!(
        "join from another machine: copy {} there (it holds the token) and run \
         photon start --connection-file FILE",
        connection_path.display()
    );
    if metrics_port != 0 {
        let scheme = if photon_proto::tls::current().is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "status page at {scheme}://{}/",
            host_port(&advertise, metrics_port)
        );
    }
    let raylet = if args.no_raylet {
        PidFile::this_process("head", &address)?.write()?;
        None
    } else {
        let mut config = RayletConfig::new(address.clone(), token);
        config.advertise_host = advertise;
        config.resources = overrides;
        config.store = StoreConfig {
            fallback_root: session_dir.clone(),
            ..store
        };
        config.idle_worker_timeout = Duration::from_secs(args.idle_worker_timeout);
        config.worker_files_retention = hours(
            args.worker_files_retention_hours,
            "--worker-files-retention-hours",
        )?;
        config.log_dir = session_dir.join("logs");
        config.package_dir = session_dir.join("raylet-packages");
        let listener = bind(&args.host, 0).await?;
        let stop = stop.clone();
        let head_address = address.clone();
        Some(tokio::spawn(async move {
            let announce = |info: &RayletInfo| announce_raylet(info, "head+raylet", &head_address);
            photon_raylet::run(config, listener, announce, stop.cancelled_owned()).await
        }))
    };
    let raylet_done = async {
        match raylet {
            Some(handle) => handle
                .await
                .expect("raylet task panicked")
                .map_err(anyhow::Error::from),
            None => {
                stop.cancelled().await;
                Ok(())
            }
        }
    };
    tokio::pin!(raylet_done);
    let raylet_result = tokio::select! {
        result = &mut head => {
            // The head ended by itself: it failed (e.g. its database is locked).
            stop.cancel();
            let _ = raylet_done.await;
            result.expect("head task panicked")?;
            bail!("the head stopped unexpectedly");
        }
        result = &mut raylet_done => result,
    };
    head_stop.cancel();
    head.await.expect("head task panicked")?;
    raylet_result
}

/// A token cancelled on SIGTERM or SIGINT.
fn tokio_util_shutdown() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
    });
    token
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A positive number of hours given with `flag`, as a duration.
fn hours(hours: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(hours * 3600.0)
        .ok()
        .filter(|age| !age.is_zero())
        .with_context(|| format!("{flag} {hours} must be a positive number of hours"))
}
