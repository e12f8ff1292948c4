//! A loopback cluster for tests: the head runs in the test process, each
//! raylet is the test binary re-executed in "raylet mode" (so it can be
//! killed with SIGKILL like a real node), and drivers join by address. Used
//! by the SDK's and the data layer's tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::{Config, Context};

/// Set on a raylet process: its spec, as JSON.
const RAYLET_ENV: &str = "PHOTON_SDK_TEST_RAYLET";

/// In raylet mode (env set by `Raylet::start`), runs a raylet and exits;
/// otherwise returns. A test binary calls it first thing in `main`.
pub fn raylet_entry() {
    let Ok(spec) = std::env::var(RAYLET_ENV) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("raylet spec");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut config = photon_raylet::RayletConfig::new(
            spec["head"].as_str().unwrap(),
            spec["token"].as_str().unwrap(),
        );
        config.log_dir = spec["logs"].as_str().unwrap().into();
        config.store.capacity = spec["store"].as_u64().unwrap_or(256 << 20);
        config.store.spill_url = spec["spill"].as_str().map(String::from);
        config.resources.num_cpus = Some(2.0);
        let mut custom: std::collections::BTreeMap<String, f64> =
            serde_json::from_value(spec["resources"].clone()).unwrap();
        // "GPU" is the built-in resource: that many GPU instances, as with --num-gpus.
        config.resources.num_gpus = custom.remove("GPU").map(|n| n as u32);
        config.resources.custom = custom;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = |info: &photon_raylet::RayletInfo| {
            println!("ADDRESS {} {}", info.address, info.node_id);
        };
        let result = photon_raylet::run(config, listener, started, std::future::pending()).await;
        eprintln!("raylet ended: {result:?}");
    });
    std::process::exit(0);
}

/// A raylet process of a [`LoopbackCluster`].
pub struct Raylet {
    child: Child,
    /// Its gRPC address.
    pub address: String,
    /// Its node id (hex).
    pub node_id: String,
    /// Where its store spills objects.
    pub spill_dir: std::path::PathBuf,
}

impl Raylet {
    fn start(
        head: &str,
        token: &str,
        logs: &std::path::Path,
        resources: serde_json::Value,
        store_bytes: u64,
        spill_dir: std::path::PathBuf,
    ) -> Self {
        let spec = serde_json::json!({
            "head": head, "token": token, "logs": logs, "resources": resources,
            "store": store_bytes, "spill": spill_dir,
        });
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(RAYLET_ENV, spec.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("raylet process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut words = line.split_whitespace().skip(1);
        let address = words
            .next()
            .expect("raylet printed its address")
            .to_string();
        let node_id = words.next().unwrap().to_string();
        Self {
            child,
            address,
            node_id,
            spill_dir,
        }
    }

    /// Kills the raylet with SIGKILL, as a node dies.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Raylet {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A head in this process and raylets as child processes on loopback.
pub struct LoopbackCluster {
    head: String,
    token: String,
    dir: tempfile::TempDir,
    raylets_started: std::sync::atomic::AtomicUsize,
    _runtime: tokio::runtime::Runtime,
}

impl LoopbackCluster {
    /// Starts the head.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = "loopback-test-token".to_string();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let head = listener.local_addr().unwrap().to_string();
        let config = photon_head::HeadConfig::new(dir.path().join("head"), token.clone());
        runtime.spawn(photon_head::run(config, listener, std::future::pending()));
        Self {
            head,
            token,
            dir,
            raylets_started: Default::default(),
            _runtime: runtime,
        }
    }

    /// Starts a raylet (2 CPUs, a 256 MiB store) with custom `resources`
    /// such as `{"stage_b": 1}` (`"GPU": n` gives it n GPU instances).
    pub fn raylet(&self, resources: serde_json::Value) -> Raylet {
        self.raylet_with_store(resources, 256 << 20)
    }

    /// [`LoopbackCluster::raylet`] with an object store of `store_bytes`.
    pub fn raylet_with_store(&self, resources: serde_json::Value, store_bytes: u64) -> Raylet {
        let n = self
            .raylets_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Raylet::start(
            &self.head,
            &self.token,
            &self.dir.path().join("logs"),
            resources,
            store_bytes,
            self.dir.path().join(format!("spill-{n}")),
        )
    }

    /// The head's address.
    pub fn head_address(&self) -> &str {
        &self.head
    }

    /// The cluster's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A driver joining the cluster through `raylet`.
    pub fn driver(&self, raylet: &Raylet) -> Context {
        crate::init(Config {
            address: Some(self.head.clone()),
            token: Some(self.token.clone()),
            raylet_address: Some(raylet.address.clone()),
            ..Config::default()
        })
        .expect("driver joins")
    }
}
