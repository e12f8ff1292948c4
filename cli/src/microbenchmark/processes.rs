//! A cluster of real `photon` processes (this binary) in a temp dir, for
//! benchmarks; every process is killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A head (no raylet) and any raylets added.
pub struct ProcessCluster {
    head: Child,
    raylets: Vec<Child>,
    /// The head's address.
    pub address: String,
    /// The cluster token.
    pub token: String,
    home: tempfile::TempDir,
}

fn wait_for<T>(
    what: &str,
    child: &mut Child,
    mut ready: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it was ready ({status})");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("{what} was not ready within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_field(path: &Path, field: &str) -> Option<String> {
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(file[field].as_str()?.to_string())
}

impl ProcessCluster {
    /// Starts a head without a raylet and waits until it serves.
    pub fn start_head() -> anyhow::Result<Self> {
        Self::start_head_with(&[])
    }

    /// [`ProcessCluster::start_head`] with extra flags (`--tls auto`). Its
    /// raylets join it as this machine's head (its CA, if any, included).
    pub fn start_head_with(flags: &[&str]) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let mut head = Command::new(std::env::current_exe()?)
            .args([
                "start",
                "--head",
                "--block",
                "--no-raylet",
                "--port",
                "0",
                "--session-dir",
            ])
            .arg(home.path().join("session"))
            .args(flags)
            .env("PHOTON_HOME", home.path())
            .env("PHOTON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a head process")?;
        let cluster_file = home.path().join("cluster.json");
        let address = wait_for("the head", &mut head, || {
            json_field(&cluster_file, "address")
        })?;
        let token = std::fs::read_to_string(home.path().join("session/token"))?;
        Ok(Self {
            head,
            raylets: Vec::new(),
            address,
            token,
            home,
        })
    }

    /// Starts a raylet with an object store of `store_bytes` and returns its
    /// address once it has registered.
    pub fn add_raylet(&mut self, store_bytes: u64) -> anyhow::Result<String> {
        let mut raylet = Command::new(std::env::current_exe()?)
            .args(["start", "--block", "--address", &self.address])
            .env("PHOTON_TOKEN", &self.token)
            .args(["--object-store-memory", &store_bytes.to_string()])
            .env("PHOTON_HOME", self.home.path())
            .env("PHOTON_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a raylet process")?;
        let pid_file = self.home.path().join(format!("pids/{}.json", raylet.id()));
        let address = wait_for("a raylet", &mut raylet, || json_field(&pid_file, "address"));
        self.raylets.push(raylet);
        address
    }

    /// The head's session directory.
    pub fn session_dir(&self) -> std::path::PathBuf {
        self.home.path().join("session")
    }

    /// CPU seconds (user + system) the head has used so far.
    pub fn head_cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.head.id()))?;
        // Fields after the command name (which may contain spaces) start after ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("bad /proc stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0) // USER_HZ is 100 on Linux
    }

    /// The head's resident memory.
    pub fn head_rss_mib(&self) -> anyhow::Result<f64> {
        let bytes =
            photon_raylet::procfs::resident_bytes(self.head.id()).context("the head is gone")?;
        Ok(bytes as f64 / f64::from(1 << 20))
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self
            .raylets
            .iter_mut()
            .chain(std::iter::once(&mut self.head))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
