//! A cluster of real hosts: three network namespaces on a bridge, each with
//! its own address, none reachable from the others on loopback. The head in
//! one (`--tls auto`), raylets in the other two, joined with the head's
//! connection file alone; everything the test does on a host it does from
//! inside that host's namespace.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::hosts::Hosts;
use support::{PHOTON, https_request, output_ids, wait_until};

const HEAD_PORT: &str = "6380";
const RAYLET_HTTP_PORT: &str = "8266";
const STORE: &str = "134217728"; // 128 MiB per node
const ROWS: usize = 8000;

/// One host's `$PHOTON_HOME` and the processes started there.
struct Host {
    home: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    hosts: Hosts,
    nodes: Vec<Host>,
    token_file: PathBuf,
    token: String,
    scratch: tempfile::TempDir,
}

impl Cluster {
    fn head_address(&self) -> String {
        format!("{}:{HEAD_PORT}", self.hosts.address(0))
    }

    /// The head's session dir, on host 0.
    fn session(&self) -> PathBuf {
        self.nodes[0].home.path().join("session")
    }

    /// `photon args…` on host `i`, with that host's home and the token file.
    fn photon(&self, i: usize, args: &[&str]) -> Command {
        let mut command = self.hosts.command(i, PHOTON);
        command
            .args(args)
            .env("PHOTON_HOME", self.nodes[i].home.path())
            .env("PHOTON_TOKEN", &self.token)
            .env_remove("PHOTON_ADDRESS")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, i: usize, args: &[&str]) -> Output {
        self.photon(i, args).output().unwrap()
    }

    /// Starts `photon start --block args…` on host `i`, logging to its home;
    /// with the token file unless `args` give a connection file.
    /// Host `i` sees `hidden` as an empty directory (a tmpfs mounted over it
    /// in the host's own mount namespace, which `ip netns exec` makes).
    fn start(&mut self, i: usize, hidden: Option<&Path>, args: &[&str]) {
        let log = std::fs::File::create(self.nodes[i].home.path().join("node.log")).unwrap();
        let mut command = match hidden {
            None => self.photon(i, &["start", "--block"]),
            Some(dir) => {
                let mut command = self.hosts.command(i, "sh");
                command
                    .args(["-c", r#"mount -t tmpfs tmpfs "$0" && exec "$@""#])
                    .arg(dir)
                    .args([PHOTON, "start", "--block"])
                    .env("PHOTON_HOME", self.nodes[i].home.path())
                    .env_remove("PHOTON_ADDRESS")
                    .stdin(Stdio::null());
                command
            }
        };
        command.args(args);
        if !args.contains(&"--connection-file") {
            command.arg("--token-file").arg(&self.token_file);
        }
        let child = command
            .env_remove("PHOTON_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[i].children.push(child);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].home.path().join("node.log")).unwrap_or_default()
    }

    fn status(&self) -> Option<Value> {
        let output = self.run(0, &["status", "--json", "--address", &self.head_address()]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    fn alive_nodes(&self) -> Vec<Value> {
        let Some(status) = self.status() else {
            return Vec::new();
        };
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "alive")
            .cloned()
            .collect()
    }
}

/// Three hosts: the head (no CPUs, like the Kubernetes head) on host 0, a
/// raylet bound to every interface on host 1, one bound to its address on
/// host 2. `None` (with the reason printed) where namespaces cannot be made.
fn three_hosts() -> Option<Cluster> {
    let hosts = match Hosts::create(3) {
        Ok(hosts) => hosts,
        Err(why) if std::env::var_os("PHOTON_REQUIRE_NETNS").is_some() => {
            panic!("PHOTON_REQUIRE_NETNS is set, and network namespaces cannot be made: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED: network namespaces cannot be made here ({why}); run as root with iproute2"
            );
            return None;
        }
    };
    let scratch = tempfile::tempdir().unwrap();
    let token = format!("multi-host-token-{}", std::process::id());
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let nodes = (0..3)
        .map(|_| Host {
            home: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        })
        .collect();
    let mut cluster = Cluster {
        hosts,
        nodes,
        token_file,
        token,
        scratch,
    };
    let head_host = cluster.hosts.address(0);
    let session = cluster.session();
    // Models live only on the head's host: the others see an empty directory.
    let models = cluster.scratch.path().join("models");
    std::fs::create_dir(&models).unwrap();
    cluster.start(
        0,
        None,
        &[
            "--head",
            "--tls",
            "auto",
            "--host",
            &head_host,
            "--port",
            HEAD_PORT,
            "--metrics-port",
            "0",
            "--num-cpus",
            "0",
            "--object-store-memory",
            STORE,
            "--session-dir",
            session.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), "the head", || cluster.status());
    let connection = session.join("connection.json");
    // Host 1 binds every interface, host 2 its own address.
    for (host, bind) in [(1, "0.0.0.0".to_string()), (2, cluster.hosts.address(2))] {
        cluster.start(
            host,
            Some(&models),
            &[
                "--connection-file",
                connection.to_str().unwrap(),
                "--host",
                &bind,
                "--num-cpus",
                "1",
                "--object-store-memory",
                STORE,
                "--metrics-port",
                RAYLET_HTTP_PORT,
            ],
        );
    }
    wait_until(Duration::from_secs(20), "three live nodes", || {
        (cluster.alive_nodes().len() == 3).then_some(())
    });
    Some(cluster)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn three_hosts_on_a_bridge_run_an_embed_job_exactly_once_through_a_host_failure() {
    let Some(cluster) = three_hosts() else { return };
    let addresses: Vec<String> = (0..3).map(|i| cluster.hosts.address(i)).collect();
    // With TLS, no node warns that its traffic is in the clear.
    assert!(
        !cluster.log(1).contains("without TLS"),
        "{}",
        cluster.log(1)
    );
    let ca = cluster.session().join("tls/ca.pem");
    let ca_flag = ["--tls-ca", ca.to_str().unwrap()];

    // Every node is advertised at its own host's address (host 1 binds
    // 0.0.0.0), and the head can dial each one.
    std::thread::sleep(Duration::from_secs(1));
    let nodes = cluster.alive_nodes();
    let mut advertised: Vec<String> = nodes
        .iter()
        .map(|n| {
            n["address"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .0
                .to_string()
        })
        .collect();
    advertised.sort();
    assert_eq!(advertised, addresses, "{nodes:?}");
    for node in &nodes {
        assert_eq!(node["unreachable"], "", "{node}");
    }

    // Hosts are apart: another host's loopback is not the head's.
    let apart = cluster.run(
        1,
        &["status", "--address", &format!("127.0.0.1:{HEAD_PORT}")],
    );
    assert!(!apart.status.success());
    assert!(
        text(&apart.stderr).contains("cannot reach the head"),
        "{}",
        text(&apart.stderr)
    );
    // Without the CA, a caller on another host cannot talk to the head.
    let untrusting = cluster.run(2, &["status", "--address", &cluster.head_address()]);
    assert!(!untrusting.status.success());
    assert!(
        text(&untrusting.stderr).contains("needs its CA"),
        "{}",
        text(&untrusting.stderr)
    );
    // A wrong token is refused across hosts.
    let wrong = cluster
        .photon(2, &["status", "--address", &cluster.head_address()])
        .args(ca_flag)
        .env("PHOTON_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(
        text(&wrong.stderr).contains("wrong cluster token"),
        "{}",
        text(&wrong.stderr)
    );

    // The embed job, driven from the head's host: the head has no CPUs, so
    // its two actors run on hosts 1 and 2, which lack the model: it travels
    // with the job.
    let work = cluster.scratch.path();
    let (model, corpus, out) = (
        work.join("models/tiny-bert"),
        work.join("corpus.parquet"),
        work.join("out"),
    );
    photon_inference::tiny_model::write_tiny_bert(&model, 11).unwrap();
    for host in [1, 2] {
        // What that host's raylet (and its workers) see at the models path.
        let raylet = cluster.nodes[host].children[0].id();
        let models = work.join("models");
        let seen = std::fs::read_dir(format!("/proc/{raylet}/root{}", models.display()))
            .unwrap()
            .count();
        assert_eq!(seen, 0, "host {host} sees the model");
    }
    let made = cluster.run(
        0,
        &[
            "sample-corpus",
            "--rows",
            &ROWS.to_string(),
            "--output",
            corpus.to_str().unwrap(),
        ],
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let driver = cluster
        .photon(
            0,
            &[
                "embed",
                "--address",
                &cluster.head_address(),
                "--id-column",
                "id",
                "--actors",
                "2..2",
                "--batch-size",
                "32",
                "--slow-batches-ms",
                "30",
                "--input",
                corpus.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "an actor on each raylet host",
        || {
            let status = cluster.status()?;
            let on: std::collections::BTreeSet<String> = status["actors"]
                .as_array()?
                .iter()
                .filter(|a| a["state"] == "alive")
                .filter_map(|a| Some(a["node_address"].as_str()?.rsplit_once(':')?.0.to_string()))
                .collect();
            (on.len() == 2).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));

    // Host 1 has pulled blocks that were read on another host.
    let fetched = cluster.hosts.within(1, || {
        let address = format!("{}:{RAYLET_HTTP_PORT}", addresses[1]);
        let bearer = format!("Bearer {}", cluster.token);
        let metrics = https_request(
            &address,
            &ca,
            "GET",
            "/metrics",
            &[("Authorization", &bearer)],
        )
        .unwrap();
        assert_eq!(metrics.code, 200, "{}", metrics.body);
        metrics
            .body
            .lines()
            .find(|l| l.starts_with("photon_object_fetched_bytes_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    });
    assert!(fetched > 0.0, "host 1 fetched no object from another host");
    // The model reached host 1 once, unpacked in its package cache.
    let unpacked: Vec<PathBuf> = std::fs::read_dir(cluster.nodes[1].home.path().join("packages"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "d"))
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].join("tiny-bert/config.json").is_file());

    // Host 2 fails mid-job: its raylet and workers are SIGKILLed.
    let mut driver = driver;
    assert!(
        driver.try_wait().unwrap().is_none(),
        "the job ended before the host failed"
    );
    cluster.hosts.kill_all(2);
    let output = driver.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the job failed after losing a host: {}\nhost 1: {}",
        text(&output.stderr),
        cluster.log(1)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("summary after losing host 2: {summary}");
    assert_eq!(summary["rows"], ROWS as u64);
    assert_eq!(summary["duplicate_ids"], 0);
    assert_eq!(output_ids(&out), (0..ROWS as i64).collect::<Vec<_>>());
    let dead: Vec<Value> = cluster.status().unwrap()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "dead")
        .cloned()
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", addresses[2]))
    );
}
