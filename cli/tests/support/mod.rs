//! The multi-process cluster harness of the CLI's tests: a head and raylets
//! as real `photon` processes in temp dirs, killed on drop.
#![allow(dead_code)] // each test binary uses part of it

pub mod hosts;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PHOTON: &str = env!("CARGO_BIN_EXE_photon");
pub const STORE: &str = "33554432"; // 32 MiB per node keeps tests light

/// The example job binary (`examples/src/bin/job_example.rs`; `scripts/test`
/// builds it), built if missing — with the workspace's features, so it
/// shares the dependencies already built.
pub fn job_example() -> PathBuf {
    let path = Path::new(PHOTON).with_file_name("job_example");
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bin", "job_example"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the example job");
    }
    path
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP/1.0 response: status code, headers (lower-case names), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn connect(address: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// `method path` to `address` over plain HTTP/1.0 with extra `headers` and `body`.
pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    exchange(connect(address), address, method, path, headers, body)
}

/// [`http_request`] over TLS, verifying the server against the CA
/// certificate in `ca` (PEM) and the address's host.
pub fn https_request(
    address: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = address.rsplit_once(':').unwrap().0.to_string();
    let connection =
        rustls::ClientConnection::new(config.into(), ServerName::try_from(host).unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, connect(address));
    // The handshake, where a server the CA did not sign is refused.
    std::io::Write::flush(&mut stream).map_err(|err| err.to_string())?;
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|err| err.to_string())?;
    }
    Ok(exchange(stream, address, method, path, headers, ""))
}

fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // A TLS peer that closes without close_notify ends the read with UnexpectedEof.
    if let Err(err) = stream.read_to_end(&mut response) {
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        code,
        headers,
        body: body.to_string(),
    }
}

/// GET `path` from `address` over plain HTTP/1.0: (status code, body).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let response = http_request(address, "GET", path, &[], "");
    (response.code, response.body)
}

/// The sorted ids of every part an output's manifest lists.
pub fn output_ids(out: &Path) -> Vec<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
    let mut ids = Vec::new();
    for part in manifest["parts"].as_array().unwrap() {
        let file = std::fs::File::open(out.join(part["name"].as_str().unwrap())).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            ids.extend(
                batch
                    .unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter(),
            );
        }
    }
    ids.sort_unstable();
    ids
}

/// A cluster whose processes are SIGKILLed on drop.
pub struct Cluster {
    pub home: tempfile::TempDir,
    pub session: PathBuf,
    pub children: Vec<Child>,
    pub address: String,
    pub token: String,
    /// Extra arguments of every `photon start --head` of this cluster.
    pub head_args: Vec<String>,
}

impl Cluster {
    /// A head without a raylet.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A head without a raylet, started with `head_args` too.
    pub fn start_with(head_args: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let session = home.path().join("session");
        let mut cluster = Self {
            home,
            session,
            children: Vec::new(),
            address: String::new(),
            token: String::new(),
            head_args: head_args.iter().map(|a| a.to_string()).collect(),
        };
        cluster.start_head(0);
        cluster
    }

    /// `photon` in this cluster's home, with its token in `PHOTON_TOKEN`
    /// once known (the token is never a flag).
    pub fn command(&self) -> Command {
        let mut command = Command::new(PHOTON);
        command
            .env("PHOTON_HOME", self.home.path())
            .env_remove("PHOTON_ADDRESS");
        if self.token.is_empty() {
            command.env_remove("PHOTON_TOKEN");
        } else {
            command.env("PHOTON_TOKEN", &self.token);
        }
        command
    }

    /// A log file in the cluster's home, appended to.
    pub fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join(name))
            .unwrap()
    }

    pub fn start_head(&mut self, port: u16) {
        let cluster_file = self.home.path().join("cluster.json");
        let _ = std::fs::remove_file(&cluster_file);
        let child = self
            .command()
            .args([
                "start",
                "--head",
                "--block",
                "--no-raylet",
                "--port",
                &port.to_string(),
                "--metrics-port",
                "0",
            ])
            .args(&self.head_args)
            .arg("--session-dir")
            .arg(&self.session)
            .stdout(Stdio::null())
            .stderr(self.log_file("head.log"))
            .spawn()
            .unwrap();
        self.children.push(child);
        let file: Value = wait_until(Duration::from_secs(20), "the head's cluster.json", || {
            serde_json::from_slice(&std::fs::read(&cluster_file).ok()?).ok()
        });
        self.address = file["address"].as_str().unwrap().to_string();
        self.token = std::fs::read_to_string(self.session.join("token")).unwrap();
    }

    /// Starts a raylet and waits until the head lists it alive; returns its pid.
    pub fn add_raylet(&mut self, extra: &[&str]) -> u32 {
        self.add_raylet_in(Path::new("."), extra)
    }

    /// [`Cluster::add_raylet`] with `dir` as the raylet's working directory
    /// (and its workers').
    pub fn add_raylet_in(&mut self, dir: &Path, extra: &[&str]) -> u32 {
        let before = self.alive_nodes().len();
        let log_path = self
            .home
            .path()
            .join(format!("raylet-{}.log", self.children.len()));
        let mut command = self.command();
        command.args([
            "start",
            "--block",
            "--address",
            &self.address,
            "--num-cpus",
            "1",
        ]);
        if !extra.contains(&"--object-store-memory") {
            command.args(["--object-store-memory", STORE]);
        }
        let child = command
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        wait_until(Duration::from_secs(20), "the raylet to register", || {
            if let Some(status) = self.children.last_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "raylet exited ({status}): {}",
                    std::fs::read_to_string(&log_path).unwrap()
                );
            }
            (self.alive_nodes().len() > before).then_some(())
        });
        pid
    }

    /// `photon status` as a person reads it.
    pub fn status_text(&self) -> String {
        let output = self
            .command()
            .args(["status", "--address", &self.address])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        let output = self
            .command()
            .args(["status", "--json", "--address", &self.address])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "photon status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.status()["nodes"].as_array().unwrap().clone()
    }

    pub fn alive_nodes(&self) -> Vec<Value> {
        self.nodes()
            .into_iter()
            .filter(|n| n["state"] == "alive")
            .collect()
    }

    pub fn node_by_pid(&self, pid: u32) -> Value {
        self.nodes()
            .into_iter()
            .find(|n| n["pid"] == pid)
            .expect("node with pid")
    }

    pub fn kill(&mut self, pid: u32, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let ends_process = signal == "-9" || signal == "-TERM";
        if let Some(child) = self
            .children
            .iter_mut()
            .find(|c| ends_process && c.id() == pid)
        {
            let _ = child.wait();
        }
    }

    pub fn head_pid(&self) -> u32 {
        self.children[0].id()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Milliseconds since the Unix epoch, as the head stamps its records.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
