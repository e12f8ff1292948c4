//! The embedded single-node cluster: a head and a raylet running on the
//! driver's runtime, on loopback ports, with a private session directory.
//! Workers are this same program, started in worker mode. Everything stops
//! when the driver's `Context` goes.

use std::time::Duration;

use photon_head::HeadConfig;
use photon_raylet::{RayletConfig, RayletInfo, ResourceOverrides};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};

/// A running embedded cluster.
pub(crate) struct EmbeddedCluster {
    pub(crate) head_address: String,
    pub(crate) token: String,
    pub(crate) raylet: RayletInfo,
    stop_raylet: Option<oneshot::Sender<()>>,
    stop_head: Option<oneshot::Sender<()>>,
    raylet_task: Option<JoinHandle<()>>,
    head_task: Option<JoinHandle<()>>,
    /// Removed when the cluster stops (unless the user chose the directory).
    _session: Option<tempfile::TempDir>,
}

impl EmbeddedCluster {
    /// Starts a head and a raylet on loopback ports.
    pub(crate) async fn start(config: &Config) -> Result<Self> {
        let (session, dir) = match &config.session_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let base = std::env::temp_dir().join("photon");
                let temp = std::fs::create_dir_all(&base)
                    .and_then(|()| {
                        tempfile::Builder::new()
                            .prefix("session-")
                            .tempdir_in(&base)
                    })
                    .map_err(|e| {
                        Error::Config(format!("cannot create a session directory: {e}"))
                    })?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        let token = config
            .token
            .clone()
            .unwrap_or_else(photon_proto::auth::generate_token);
        let bind = |what: &'static str| async move {
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
                Error::Config(format!("cannot bind a loopback port for the {what}: {e}"))
            })
        };
        let head_listener = bind("head").await?;
        let head_address = head_listener
            .local_addr()
            .map_err(|e| Error::Config(e.to_string()))?
            .to_string();
        let mut head_config = HeadConfig::new(dir.join("head"), token.clone());
        // One process: nothing to wait for after a restart.
        head_config.heartbeat_interval = Duration::from_millis(500);
        let (stop_head, head_stopped) = oneshot::channel::<()>();
        let head_task = tokio::spawn(async move {
            let shutdown = async {
                let _ = head_stopped.await;
            };
            if let Err(err) = photon_head::run(head_config, head_listener, shutdown).await {
                tracing::error!(%err, "embedded head stopped");
            }
        });

        let mut raylet_config = RayletConfig::new(head_address.clone(), token.clone());
        raylet_config.advertise_host = "127.0.0.1".into();
        raylet_config.log_dir = dir.join("logs");
        raylet_config.worker_memory_limit = config.worker_memory_limit;
        if let Some(bytes) = config.object_store_memory {
            raylet_config.store.capacity = bytes;
        }
        raylet_config.resources = ResourceOverrides {
            num_cpus: config.num_cpus,
            num_gpus: config.num_gpus,
            memory: None,
            custom: config.resources.clone(),
        };
        raylet_config
            .resources
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let raylet_listener = bind("raylet").await?;
        let (started, ready) = oneshot::channel::<RayletInfo>();
        let (stop_raylet, raylet_stopped) = oneshot::channel::<()>();
        let raylet_task = tokio::spawn(async move {
            let shutdown = async {
                let _ = raylet_stopped.await;
            };
            let started = move |info: &RayletInfo| {
                let _ = started.send(info.clone());
            };
            if let Err(err) =
                photon_raylet::run(raylet_config, raylet_listener, started, shutdown).await
            {
                tracing::error!(%err, "embedded raylet stopped");
            }
        });
        let raylet = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| Error::Cluster("the embedded raylet did not register within 30 s".into()))?
            .map_err(|_| {
                Error::Cluster(
                    "the embedded raylet stopped while starting (see the log above)".into(),
                )
            })?;
        Ok(Self {
            head_address,
            token,
            raylet,
            stop_raylet: Some(stop_raylet),
            stop_head: Some(stop_head),
            raylet_task: Some(raylet_task),
            head_task: Some(head_task),
            _session: session,
        })
    }

    /// Stops the raylet (and its workers), then the head.
    pub(crate) async fn stop(&mut self) {
        if let Some(stop) = self.stop_raylet.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.raylet_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Some(stop) = self.stop_head.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.head_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
