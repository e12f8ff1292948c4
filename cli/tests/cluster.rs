//! Multi-process cluster tests on loopback: a head and raylets as real
//! `photon` processes in temp dirs, killed on drop.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Cluster, PHOTON, STORE, failure, output_ids, unix_ms, wait_until};

#[test]
fn three_raylets_register_with_their_resources() {
    let mut cluster = Cluster::start();
    for _ in 0..2 {
        cluster.add_raylet(&["--num-gpus", "1"]);
    }
    let special = cluster.add_raylet(&["--num-gpus", "1", "--resources", r#"{"special": 2.5}"#]);
    let nodes = cluster.alive_nodes();
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        assert_eq!(node["total"]["GPU"], 1.0);
        assert_eq!(node["total"]["CPU"], 1.0);
        assert_eq!(node["object_store_capacity"], 33554432);
        assert!(node["last_heartbeat_age_ms"].as_u64().unwrap() < 2000);
    }
    assert_eq!(cluster.node_by_pid(special)["total"]["special"], 2.5);
    let ids: std::collections::HashSet<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "distinct node ids");
}

#[test]
fn a_killed_raylet_is_declared_dead_within_3_seconds() {
    let mut cluster = Cluster::start();
    let victim = cluster.add_raylet(&[]);
    let survivor = cluster.add_raylet(&[]);
    let killed_at = unix_ms();
    cluster.kill(victim, "-9");
    // Polled with a margin: under load each `photon status` takes a while,
    // and what is measured is when the head declared the node dead.
    let (reason, died_at) = wait_until(
        Duration::from_secs(10),
        "the head to declare the node dead",
        || {
            let node = cluster.node_by_pid(victim);
            (node["state"] == "dead").then(|| {
                (
                    node["death_reason"].as_str().unwrap().to_string(),
                    node["died_at_unix_ms"].as_u64().unwrap(),
                )
            })
        },
    );
    let detected_in = Duration::from_millis(died_at.saturating_sub(killed_at));
    eprintln!("dead node detected in {detected_in:?}: {reason}");
    assert!(detected_in < Duration::from_secs(3), "took {detected_in:?}");
    assert!(
        reason.contains("probe") || reason.contains("missed heartbeats"),
        "{reason}"
    );
    assert_eq!(cluster.node_by_pid(survivor)["state"], "alive");
}

#[test]
fn a_silent_raylet_is_declared_dead_after_the_heartbeat_timeout_and_rejoins_as_a_new_node() {
    let mut cluster = Cluster::start();
    let frozen = cluster.add_raylet(&[]);
    let old_id = cluster.node_by_pid(frozen)["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    // SIGSTOP keeps the connection open but stops heartbeats: only the timeout can tell.
    cluster.kill(frozen, "-STOP");
    let stopped_at = Instant::now();
    let reason = wait_until(Duration::from_secs(6), "the heartbeat timeout", || {
        let node = cluster.node_by_pid(frozen);
        (node["state"] == "dead").then(|| node["death_reason"].as_str().unwrap().to_string())
    });
    let waited = stopped_at.elapsed();
    assert!(
        reason.contains("missed heartbeats") && reason.contains("timeout 3.0 s"),
        "{reason}"
    );
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    cluster.kill(frozen, "-CONT");
    // The same process comes back under a new node id; the old record stays dead.
    let rejoined = wait_until(Duration::from_secs(15), "the raylet to rejoin", || {
        cluster
            .alive_nodes()
            .into_iter()
            .find(|n| n["pid"] == frozen && n["node_id"] != old_id.as_str())
    });
    let old = cluster
        .nodes()
        .into_iter()
        .find(|n| n["node_id"] == old_id.as_str())
        .unwrap();
    assert_eq!(old["state"], "dead");
    assert_eq!(cluster.alive_nodes().len(), 1, "{rejoined}");
    // And it takes work: an embed job runs on it, the only node.
    let (dir, model, corpus) = model_and_corpus(&cluster, 4, 50);
    let out = dir.path().join("out");
    let output = embed_on(&cluster, &corpus, &out, &model).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output_ids(&out), (0..50).collect::<Vec<i64>>());
}

#[test]
fn a_cleanly_stopped_raylet_leaves_at_once() {
    let mut cluster = Cluster::start();
    let pid = cluster.add_raylet(&[]);
    cluster.kill(pid, "-TERM");
    let node = cluster.node_by_pid(pid);
    assert_eq!(node["state"], "dead");
    assert!(
        node["death_reason"]
            .as_str()
            .unwrap()
            .starts_with("stopped"),
        "{node}"
    );
}

#[test]
fn head_restart_after_kill_9_keeps_its_tables_and_raylets_come_back() {
    let mut cluster = Cluster::start();
    let first = cluster.add_raylet(&["--num-gpus", "1"]);
    let second = cluster.add_raylet(&[]);
    let gone = cluster.add_raylet(&[]);
    cluster.kill(gone, "-TERM");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    actors::create(&cluster, &runtime, actors::spec(0, &[("GPU", 0.5)], 1));
    actors::create(&cluster, &runtime, actors::spec(1, &[("GPU", 0.25)], 1));
    let placed = actors::actor(&cluster, 0);
    assert_eq!(placed["state"], "alive");
    let doomed_pid = actors::actor(&cluster, 1)["pid"].as_u64().unwrap();
    let before = cluster.status();
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();

    let head = cluster.head_pid();
    cluster.kill(head, "-9");
    cluster.children.remove(0).wait().unwrap(); // already reaped by kill(); returns at once
    // A worker that dies while the head is away: nobody can be told now.
    std::process::Command::new("kill")
        .args(["-9", &doomed_pid.to_string()])
        .status()
        .unwrap();
    cluster.start_head(port);
    let after = cluster.status();
    assert_eq!(after["cluster_id"], before["cluster_id"], "same cluster");
    assert_eq!(
        after["nodes"].as_array().unwrap().len(),
        3,
        "no node record lost: {after}"
    );
    let dead = cluster.node_by_pid(gone);
    assert_eq!(dead["state"], "dead");
    assert!(
        dead["death_reason"]
            .as_str()
            .unwrap()
            .starts_with("stopped")
    );

    // The raylets re-register by themselves and keep heartbeating.
    wait_until(Duration::from_secs(10), "raylets to re-register", || {
        let node = cluster.node_by_pid(first);
        (node["state"] == "alive" && node["last_heartbeat_age_ms"].as_u64().unwrap() < 1000)
            .then_some(())
    });
    // Stay past one full node timeout: re-registered raylets must keep heartbeating.
    std::thread::sleep(Duration::from_millis(3500));
    for pid in [first, second] {
        let node = cluster.node_by_pid(pid);
        assert_eq!(node["state"], "alive", "{node}");
        assert!(
            node["last_heartbeat_age_ms"].as_u64().unwrap() < 1500,
            "{node}"
        );
    }
    assert_eq!(cluster.node_by_pid(first)["total"]["GPU"], 1.0);
    let kept = actors::actor(&cluster, 0);
    assert_eq!(
        (&kept["state"], &kept["pid"], &kept["node_address"]),
        (&placed["state"], &placed["pid"], &placed["node_address"]),
        "the actor table survived"
    );
    // The re-registering raylet no longer runs actor 1: the head restarts it.
    let restarted = wait_until(Duration::from_secs(5), "the lost actor's restart", || {
        let record = actors::actor(&cluster, 1);
        (record["state"] == "alive" && record["restarts"] == 1).then_some(record)
    });
    assert_ne!(restarted["pid"].as_u64(), Some(doomed_pid));
}

#[test]
fn wrong_or_missing_token_is_refused_clearly() {
    let cluster = Cluster::start();
    let output = cluster
        .command()
        .args([
            "start",
            "--block",
            "--address",
            &cluster.address,
            "--object-store-memory",
            STORE,
        ])
        .env("PHOTON_TOKEN", "not-the-token")
        .output()
        .unwrap();
    let stderr = failure(&output);
    assert!(
        stderr.contains("refused this node") && stderr.contains("wrong cluster token"),
        "{stderr}"
    );

    let output = cluster
        .command()
        .args(["status", "--address", &cluster.address])
        .env("PHOTON_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(failure(&output).contains("wrong cluster token"));
    assert!(cluster.alive_nodes().is_empty(), "nothing joined");
}

#[test]
fn bad_flags_and_busy_ports_fail_before_anything_starts() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(PHOTON)
            .env("PHOTON_HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let stderr = failure(&run(&[
        "start",
        "--head",
        "--block",
        "--resources",
        "{not json",
    ]));
    assert!(
        stderr.contains("--resources") && stderr.contains("not a JSON object"),
        "{stderr}"
    );
    let stderr = failure(&run(&["start", "--head", "--block", "--num-cpus=-2"]));
    assert!(stderr.contains("must not be negative"), "{stderr}");
    let stderr = failure(&run(&[
        "start",
        "--head",
        "--block",
        "--resources",
        r#"{"GPU": 1}"#,
        "--port",
        "0",
    ]));
    assert!(
        stderr.contains("built-in name") && stderr.contains("--num-gpus"),
        "{stderr}"
    );
    let stderr = failure(&run(&["start"]));
    assert!(stderr.contains("--address"), "{stderr}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let stderr = failure(&run(&[
        "start",
        "--head",
        "--block",
        "--no-raylet",
        "--port",
        &port,
    ]));
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{stderr}"
    );
    assert!(
        !home.path().join("cluster.json").exists(),
        "a failed start publishes nothing"
    );

    let token_file = home.path().join("token-file");
    std::fs::write(&token_file, "t\n").unwrap();
    let stderr = failure(&run(&[
        "start",
        "--block",
        "--address",
        "127.0.0.1:1",
        "--token-file",
        token_file.to_str().unwrap(),
        "--object-store-memory",
        STORE,
    ]));
    assert!(
        stderr.contains("cannot reach the head at 127.0.0.1:1"),
        "{stderr}"
    );
}

/// `photon args…` with `home` as `$PHOTON_HOME` and no token in the
/// environment, which must succeed: its stdout.
fn photon_in(home: &Path, args: &[&str]) -> String {
    let output = Command::new(PHOTON)
        .env("PHOTON_HOME", home)
        .env_remove("PHOTON_TOKEN")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn start_detaches_and_stop_stops_everything() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| photon_in(home.path(), args);
    let started = run(&[
        "start",
        "--head",
        "--port",
        "0",
        "--num-gpus",
        "2",
        "--object-store-memory",
        STORE,
    ]);
    assert!(
        started.contains("join more nodes:   photon start --address 127.0.0.1:"),
        "{started}"
    );
    let address = started
        .split("--address ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    run(&[
        "start",
        "--address",
        &address,
        "--object-store-memory",
        STORE,
    ]);
    let status: Value = serde_json::from_str(&run(&["status", "--json"])).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["total"]["GPU"], 2.0);
    let human = run(&["status"]);
    assert!(
        human.contains("2 node(s) alive") && human.contains("GPU"),
        "{human}"
    );
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();

    let stopped = run(&["stop"]);
    assert_eq!(stopped.matches("stopped ").count(), 2, "{stopped}");
    for pid in pids {
        // Ended (a zombie until its new parent reaps it counts as ended).
        assert!(
            photon_proto::process_started(pid).is_none(),
            "process {pid} has ended"
        );
    }
    assert!(!home.path().join("cluster.json").exists());
    assert!(run(&["stop"]).contains("no photon processes"));
}

mod transfer {
    use super::*;
    use bytes::Bytes;
    use photon_proto::v1::{DeleteObjectRequest, FetchObjectRequest};
    use photon_proto::{JobId, ObjectId, TaskId};
    use photon_raylet::transfer::{connect, pull_object, push_object};

    const BIG_STORE: &str = "805306368"; // 768 MiB

    fn object(n: u32) -> ObjectId {
        ObjectId::for_put(TaskId::for_driver(JobId::from_u32(7)), n)
    }

    /// 256 MiB with no two 1 MiB blocks alike (built with memcpy: fast in debug builds).
    fn big_object() -> Bytes {
        let block: Vec<u8> = (0..1usize << 20)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        let mut data = Vec::with_capacity(256 << 20);
        for n in 0..256u32 {
            data.extend_from_slice(&block);
            let end = data.len();
            data[end - 4..].copy_from_slice(&n.to_le_bytes());
        }
        Bytes::from(data)
    }

    #[test]
    fn a_256_mib_object_moves_between_raylets_intact_and_fetches_are_shared() {
        let mut cluster = Cluster::start();
        let holder_pid = cluster.add_raylet(&["--object-store-memory", BIG_STORE]);
        let fetcher_pid = cluster.add_raylet(&["--object-store-memory", BIG_STORE]);
        let holder_address = cluster.node_by_pid(holder_pid)["address"]
            .as_str()
            .unwrap()
            .to_string();
        let fetcher_address = cluster.node_by_pid(fetcher_pid)["address"]
            .as_str()
            .unwrap()
            .to_string();
        let data = big_object();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut holder = connect(&holder_address, &cluster.token).unwrap();
            let mut fetcher = connect(&fetcher_address, &cluster.token).unwrap();
            assert_eq!(
                push_object(&mut holder, object(1), data.clone())
                    .await
                    .unwrap(),
                256 << 20
            );

            // Two concurrent fetches, no source given: the head's directory finds
            // the holder, and only one transfer happens.
            let request = || FetchObjectRequest {
                object_id: object(1).to_vec(),
                source_address: String::new(),
            };
            let (mut a, mut b) = (fetcher.clone(), fetcher.clone());
            let (first, second) =
                tokio::join!(a.fetch_object(request()), b.fetch_object(request()));
            let (first, second) = (first.unwrap().into_inner(), second.unwrap().into_inner());
            assert_eq!((first.size, second.size), (256 << 20, 256 << 20));
            assert_eq!(
                u8::from(first.transferred) + u8::from(second.transferred),
                1,
                "{first:?} {second:?}"
            );

            let copy = pull_object(&mut fetcher, object(1)).await.unwrap();
            assert_eq!(copy.len(), 256 << 20);
            assert!(copy[..] == data[..], "the copy is intact, byte for byte");

            // Once the holder drops its copy and the fetcher's copy is deleted, nobody has it.
            holder
                .delete_object(DeleteObjectRequest {
                    object_id: object(1).to_vec(),
                })
                .await
                .unwrap();
            fetcher
                .delete_object(DeleteObjectRequest {
                    object_id: object(1).to_vec(),
                })
                .await
                .unwrap();
            let status = fetcher.fetch_object(request()).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound);
            assert!(
                status.message().contains("no live node holds a copy"),
                "{}",
                status.message()
            );

            // A dead holder's copies leave the directory.
            push_object(&mut holder, object(2), Bytes::from(vec![9u8; 1000]))
                .await
                .unwrap();
        });
        cluster.kill(holder_pid, "-9");
        wait_until(
            // The 3 s detection bound has its own test; here death is only a precondition.
            Duration::from_secs(10),
            "the holder to be declared dead",
            || (cluster.node_by_pid(holder_pid)["state"] == "dead").then_some(()),
        );
        runtime.block_on(async {
            let mut fetcher = connect(&fetcher_address, &cluster.token).unwrap();
            let request = FetchObjectRequest {
                object_id: object(2).to_vec(),
                source_address: String::new(),
            };
            let status = fetcher.fetch_object(request).await.unwrap_err();
            assert!(
                status.message().contains("no live node holds a copy"),
                "{}",
                status.message()
            );
        });
    }

    #[test]
    fn a_malformed_push_is_refused_and_leaves_nothing_behind() {
        let mut cluster = Cluster::start();
        let pid = cluster.add_raylet(&[]);
        let address = cluster.node_by_pid(pid)["address"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut raylet = connect(&address, &cluster.token).unwrap();
            let chunk = |offset: u64, len: usize| photon_proto::v1::ObjectChunk {
                object_id: object(3).to_vec(),
                total_size: 1000,
                offset,
                data: Bytes::from(vec![1u8; len]),
            };
            // A gap between chunks.
            let status = raylet
                .push_object(tokio_stream::iter(vec![chunk(0, 100), chunk(500, 100)]))
                .await
                .unwrap_err();
            assert!(
                status
                    .message()
                    .contains("does not follow byte 100 of 1000"),
                "{}",
                status.message()
            );
            // A stream that ends early.
            let status = raylet
                .push_object(tokio_stream::iter(vec![chunk(0, 100)]))
                .await
                .unwrap_err();
            assert!(
                status.message().contains("ended after 100 of 1000 bytes"),
                "{}",
                status.message()
            );
            // Nothing half-written stays: the id is still free.
            let full = vec![chunk(0, 1000)];
            assert_eq!(
                raylet
                    .push_object(tokio_stream::iter(full))
                    .await
                    .unwrap()
                    .into_inner()
                    .size,
                1000
            );
            let status = raylet
                .pull_object(photon_proto::v1::PullObjectRequest {
                    object_id: object(4).to_vec(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::NotFound);
        });
        assert_eq!(
            cluster.node_by_pid(pid)["state"],
            "alive",
            "the raylet stays up"
        );
    }
}

mod actors {
    use super::*;
    use photon_proto::auth::AttachToken;
    use photon_proto::v1::head_client::HeadClient;
    use photon_proto::v1::{ActorSpec, KillActorRequest};
    use photon_proto::{ActorId, JobId, Quantity, ResourceSet, TaskId};
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::Channel;

    fn actor_id(n: u64) -> ActorId {
        ActorId::for_child(TaskId::for_driver(JobId::from_u32(9)), n)
    }

    /// An actor that runs `sleep`, requesting `resources`.
    pub(super) fn spec(n: u64, resources: &[(&str, f64)], max_restarts: u32) -> ActorSpec {
        let mut set = ResourceSet::new();
        for &(name, amount) in resources {
            set.set(name, Quantity::from_f64(name, amount).unwrap());
        }
        ActorSpec {
            actor_id: actor_id(n).to_vec(),
            name: format!("actor-{n:02}"),
            resources: set.to_proto(),
            max_restarts,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "exec sleep 120".into()],
            ..Default::default()
        }
    }

    fn head(
        cluster: &Cluster,
        runtime: &tokio::runtime::Runtime,
    ) -> HeadClient<InterceptedService<Channel, AttachToken>> {
        runtime.block_on(async {
            let channel = Channel::from_shared(format!("http://{}", cluster.address))
                .unwrap()
                .connect()
                .await
                .unwrap();
            HeadClient::with_interceptor(channel, AttachToken::new(&cluster.token).unwrap())
        })
    }

    pub(super) fn create(cluster: &Cluster, runtime: &tokio::runtime::Runtime, spec: ActorSpec) {
        let mut head = head(cluster, runtime);
        runtime.block_on(head.create_actor(spec)).unwrap();
    }

    fn kill_actor(cluster: &Cluster, runtime: &tokio::runtime::Runtime, n: u64) {
        let mut head = head(cluster, runtime);
        runtime
            .block_on(head.kill_actor(KillActorRequest {
                actor_id: actor_id(n).to_vec(),
            }))
            .unwrap();
    }

    pub(super) fn actor(cluster: &Cluster, n: u64) -> Value {
        let id = actor_id(n).to_string();
        cluster.status()["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["actor_id"] == id.as_str())
            .unwrap()
            .clone()
    }

    /// The environment variable `name` of process `pid`.
    fn environ(pid: u64, name: &str) -> Option<String> {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
    }

    #[test]
    fn status_shows_placement_groups_and_why_one_waits() {
        use photon_proto::PlacementGroupId;
        use photon_proto::v1::{Bundle, PlacementGroupSpec, PlacementStrategy};
        let mut cluster = Cluster::start();
        cluster.add_raylet(&["--num-gpus", "1"]);
        cluster.add_raylet(&["--num-gpus", "1"]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut head = head(&cluster, &runtime);
        let gpu = Bundle {
            resources: [("GPU".to_string(), 10_000)].into(),
        };
        let group = |name: &str, bundles: usize| PlacementGroupSpec {
            group_id: PlacementGroupId::random().to_vec(),
            name: name.into(),
            bundles: vec![gpu.clone(); bundles],
            strategy: PlacementStrategy::StrictPack as i32,
            job_id: JobId::from_u32(9).to_vec(),
        };
        runtime
            .block_on(head.create_placement_group(group("pair", 2)))
            .unwrap();
        runtime
            .block_on(head.create_placement_group(group("single", 1)))
            .unwrap();
        let status = cluster.status();
        let groups = status["placement_groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2, "{status}");
        assert_eq!(groups[0]["name"], "pair");
        assert_eq!(groups[0]["state"], "pending");
        assert_eq!(groups[1]["state"], "created");
        let text = cluster.status_text();
        assert!(
            text.contains("placement groups:")
                && text.contains("pending pair")
                && text.contains("STRICT_PACK")
                && text.contains("infeasible: STRICT_PACK needs GPU: 2 on one node")
                && text.contains("created single"),
            "{text}"
        );
    }

    #[test]
    fn quarter_gpu_actors_pack_four_per_gpu_with_their_devices() {
        let mut cluster = Cluster::start();
        for _ in 0..3 {
            cluster.add_raylet(&["--num-gpus", "1"]);
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for n in 0..8 {
            create(&cluster, &runtime, spec(n, &[("GPU", 0.25)], 0));
        }
        let mut per_node: std::collections::HashMap<String, usize> = Default::default();
        for n in 0..8 {
            let record = actor(&cluster, n);
            assert_eq!(record["state"], "alive", "{record}");
            assert_eq!(record["cuda_visible_devices"], "0");
            let pid = record["pid"].as_u64().unwrap();
            assert_eq!(
                environ(pid, "CUDA_VISIBLE_DEVICES").as_deref(),
                Some("0"),
                "the worker's own environment"
            );
            assert_eq!(
                environ(pid, "PHOTON_ACTOR_ID"),
                Some(actor_id(n).to_string())
            );
            assert_eq!(environ(pid, "PHOTON_WORKER").as_deref(), Some("1"));
            *per_node
                .entry(record["node_address"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let mut counts: Vec<usize> = per_node.into_values().collect();
        counts.sort_unstable();
        assert_eq!(counts, [4, 4], "two GPUs full, the third untouched");
        wait_until(
            Duration::from_secs(5),
            "heartbeats to report the GPUs in use",
            || {
                let used: Vec<f64> = cluster
                    .alive_nodes()
                    .iter()
                    .map(|n| n["available"]["GPU"].as_f64().unwrap_or(0.0))
                    .collect();
                (used.iter().filter(|&&free| free == 0.0).count() == 2).then_some(())
            },
        );
    }

    #[test]
    fn a_third_half_gpu_actor_waits_with_a_reason_until_one_exits() {
        let mut cluster = Cluster::start();
        cluster.add_raylet(&["--num-gpus", "1"]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for n in 0..3 {
            create(&cluster, &runtime, spec(n, &[("GPU", 0.5)], 0));
        }
        assert_eq!(actor(&cluster, 0)["state"], "alive");
        assert_eq!(actor(&cluster, 1)["state"], "alive");
        let pending = actor(&cluster, 2);
        assert_eq!(pending["state"], "pending");
        // The head's own view says "GPU: 0.5 is not free"; if a heartbeat made
        // its view stale, the raylet's refusal says "no GPU instance has 0.5 free".
        let reason = pending["reason"].as_str().unwrap();
        assert!(reason.starts_with("waiting for resources"), "{pending}");
        assert!(
            reason.contains("0.5 is not free") || reason.contains("has 0.5 free"),
            "{pending}"
        );
        let human = cluster.status_text();
        assert!(
            human.contains("1 pending") && human.contains("pending actor-02"),
            "{human}"
        );

        kill_actor(&cluster, &runtime, 0);
        let placed = wait_until(
            Duration::from_secs(5),
            "the pending actor to be placed",
            || {
                let record = actor(&cluster, 2);
                (record["state"] == "alive").then_some(record)
            },
        );
        assert_eq!(placed["cuda_visible_devices"], "0");
        let killed = actor(&cluster, 0);
        assert_eq!(
            (killed["state"].as_str(), killed["reason"].as_str()),
            (Some("dead"), Some("killed by request"))
        );

        create(&cluster, &runtime, spec(3, &[("GPU", 2.0)], 0));
        let infeasible = actor(&cluster, 3);
        assert!(
            infeasible["reason"]
                .as_str()
                .unwrap()
                .contains("infeasible"),
            "{infeasible}"
        );
    }

    #[test]
    fn actors_on_a_killed_node_restart_elsewhere_per_max_restarts() {
        let mut cluster = Cluster::start();
        let first = cluster.add_raylet(&["--num-gpus", "1"]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        create(&cluster, &runtime, spec(0, &[("GPU", 0.5)], 1));
        create(&cluster, &runtime, spec(1, &[("GPU", 0.5)], 0));
        let first_address = cluster.node_by_pid(first)["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(actor(&cluster, 0)["node_address"], first_address.as_str());
        let orphan = actor(&cluster, 1)["pid"].as_u64().unwrap();
        cluster.add_raylet(&["--num-gpus", "1"]);
        cluster.kill(first, "-9");
        wait_until(
            Duration::from_secs(5),
            "the dead raylet's workers to go with it",
            || (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(()),
        );

        let restarted = wait_until(
            Duration::from_secs(5),
            "the actor to restart on the other node",
            || {
                let record = actor(&cluster, 0);
                (record["state"] == "alive" && record["restarts"] == 1).then_some(record)
            },
        );
        assert_ne!(restarted["node_address"], first_address.as_str());
        assert_eq!(restarted["restarts"], 1);
        let gone = actor(&cluster, 1);
        assert_eq!(gone["state"], "dead");
        let reason = gone["reason"].as_str().unwrap();
        assert!(
            reason.contains("died") && reason.contains("max_restarts is 0"),
            "{reason}"
        );
    }

    #[test]
    fn a_killed_worker_restarts_its_actor_and_custom_resources_pick_the_node() {
        let mut cluster = Cluster::start();
        cluster.add_raylet(&[]);
        let special = cluster.add_raylet(&["--resources", r#"{"special": 1}"#]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        create(&cluster, &runtime, spec(0, &[("special", 1.0)], 1));
        let record = actor(&cluster, 0);
        assert_eq!(
            record["node_address"],
            cluster.node_by_pid(special)["address"]
        );
        assert_eq!(
            environ(record["pid"].as_u64().unwrap(), "CUDA_VISIBLE_DEVICES").as_deref(),
            Some("")
        );

        let old_pid = record["pid"].as_u64().unwrap();
        std::process::Command::new("kill")
            .args(["-9", &old_pid.to_string()])
            .status()
            .unwrap();
        let restarted = wait_until(Duration::from_secs(5), "the actor's restart", || {
            let record = actor(&cluster, 0);
            (record["state"] == "alive" && record["pid"].as_u64() != Some(old_pid))
                .then_some(record)
        });
        assert_eq!(restarted["restarts"], 1);

        let second_pid = restarted["pid"].as_u64().unwrap();
        std::process::Command::new("kill")
            .args(["-9", &second_pid.to_string()])
            .status()
            .unwrap();
        let dead = wait_until(Duration::from_secs(5), "the actor to die for good", || {
            let record = actor(&cluster, 0);
            (record["state"] == "dead").then_some(record)
        });
        let reason = dead["reason"].as_str().unwrap();
        assert!(
            reason.contains("killed by signal 9 (SIGKILL)")
                && reason.contains("all 1 restarts used"),
            "{reason}"
        );
    }
}

/// A temp dir with a tiny model (`seed`) and a sample corpus of `rows`
/// rows: (dir, model, corpus).
fn model_and_corpus(
    cluster: &Cluster,
    seed: u64,
    rows: usize,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (model, corpus) = (dir.path().join("model"), dir.path().join("corpus.parquet"));
    photon_inference::tiny_model::write_tiny_bert(&model, seed).unwrap();
    let made = cluster
        .command()
        .args(["sample-corpus", "--rows", &rows.to_string(), "--output"])
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", failure(&made));
    (dir, model, corpus)
}

/// `photon embed` on `cluster` from `corpus` into `out`, as a command.
fn embed_on(cluster: &Cluster, corpus: &Path, out: &Path, model: &Path) -> Command {
    let mut command = cluster.command();
    command
        .args(["embed", "--address", &cluster.address, "--id-column", "id"])
        .arg("--input")
        .arg(corpus)
        .arg("--output")
        .arg(out)
        .arg("--model")
        .arg(model)
        .env("PHOTON_TOKEN", &cluster.token);
    command
}

#[test]
fn a_killed_or_interrupted_embed_driver_leaves_no_actor_behind_and_its_rerun_finishes() {
    let mut cluster = Cluster::start();
    cluster.add_raylet(&[]);
    let (dir, model, corpus) = model_and_corpus(&cluster, 8, 1000);
    for signal in ["-KILL", "-INT"] {
        let out = dir.path().join(format!("out{signal}"));
        let mut driver = slow_embed_with_its_actor_up(&cluster, &corpus, &out, &model);
        let sent = Command::new("kill")
            .args([signal, &driver.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let ended = driver.wait().unwrap();
        assert!(!ended.success(), "{signal}: {ended}");
        let killed = Instant::now();
        // Within 5 s the driver's actor is dead and its CPU free again.
        wait_until(
            Duration::from_secs(5),
            "the actor to end with its driver",
            || {
                let node = &cluster.alive_nodes()[0];
                (alive_actors(&cluster) == 0 && node["available"]["CPU"] == node["total"]["CPU"])
                    .then_some(())
            },
        );
        eprintln!(
            "{signal}: actor ended {:?} after its driver",
            killed.elapsed()
        );
        // The same command then runs to completion, without --overwrite: what
        // the dead driver staged is not "files already there".
        let rerun = embed_on(&cluster, &corpus, &out, &model).output().unwrap();
        assert!(rerun.status.success(), "{signal}: {}", failure(&rerun));
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
        assert_eq!(manifest["rows"], 1000, "{signal}: {manifest}");
        let leftovers: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("_temporary") || name == photon_data::WRITER_LOCK)
            .collect();
        assert!(leftovers.is_empty(), "{signal}: {leftovers:?}");
    }
}

/// A `photon embed --address` driver slowed down to last, started and
/// waited for until its actor is up.
fn slow_embed_with_its_actor_up(
    cluster: &Cluster,
    corpus: &Path,
    out: &Path,
    model: &Path,
) -> std::process::Child {
    let driver = embed_on(cluster, corpus, out, model)
        .args(["--batch-size", "8", "--slow-batches-ms", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the embed actor", || {
        (alive_actors(cluster) > 0).then_some(())
    });
    driver
}

fn alive_actors(cluster: &Cluster) -> usize {
    cluster.status()["actors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] != "dead")
        .count()
}

#[test]
fn an_embed_driver_that_died_while_the_head_was_down_is_ended_after_the_restart() {
    let mut cluster = Cluster::start();
    cluster.add_raylet(&[]);
    let (dir, model, corpus) = model_and_corpus(&cluster, 8, 1000);
    let out = dir.path().join("out");
    let mut driver = slow_embed_with_its_actor_up(&cluster, &corpus, &out, &model);
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    let head = cluster.head_pid();
    cluster.kill(head, "-9");
    cluster.children.remove(0).wait().unwrap();
    driver.kill().unwrap();
    driver.wait().unwrap();
    cluster.start_head(port);
    let restarted = Instant::now();
    // The restarted head waits 5 s for the driver to reattach, then ends its job.
    wait_until(
        Duration::from_secs(15),
        "the dead driver's actor to end",
        || {
            let nodes = cluster.alive_nodes();
            let node = nodes.first()?;
            (alive_actors(&cluster) == 0 && node["available"]["CPU"] == node["total"]["CPU"])
                .then_some(())
        },
    );
    let waited = restarted.elapsed();
    eprintln!("actor ended {waited:?} after the head restarted");
    assert!(
        waited >= Duration::from_secs(4),
        "ended before the reattach grace: {waited:?}"
    );
    let actors = cluster.status()["actors"].clone();
    assert!(
        actors.as_array().unwrap().iter().all(|a| a["reason"]
            .as_str()
            .unwrap_or("")
            .contains("did not come back")),
        "{actors}"
    );
}

/// Child processes of `pid` (a raylet's workers).
fn children_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
                .map(|list| list.split_whitespace().count())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn consecutive_embed_runs_leave_no_workers_on_the_raylet() {
    const RUNS: usize = 20;
    let mut cluster = Cluster::start();
    let raylet = cluster.add_raylet(&[]);
    let (dir, model, corpus) = model_and_corpus(&cluster, 9, 300);
    let baseline = children_of(raylet);
    let mut memory_after_warm_up = 0;
    for run in 0..RUNS {
        let out = dir.path().join(format!("out-{run}"));
        let embedded = embed_on(&cluster, &corpus, &out, &model)
            .arg("--json")
            .output()
            .unwrap();
        assert!(embedded.status.success(), "{}", failure(&embedded));
        // The summary's peak memory counts the job's processes across the
        // cluster: the driver, the raylet and at least the job's actor.
        let summary: Value = serde_json::from_slice(&embedded.stdout).unwrap();
        assert!(
            summary["peak_memory_processes"].as_u64().unwrap() >= 3
                && summary["peak_memory_bytes"].as_u64().unwrap() > private_memory(raylet),
            "{summary}"
        );
        // The job's workers (its actor's and its read tasks') end with it.
        wait_until(Duration::from_secs(5), "the job's workers to end", || {
            (children_of(raylet) <= baseline).then_some(())
        });
        if run == 1 {
            memory_after_warm_up = private_memory(raylet);
        }
    }
    let memory = private_memory(raylet);
    eprintln!(
        "raylet private memory: {} KiB after 2 runs, {} KiB after {RUNS}",
        memory_after_warm_up >> 10,
        memory >> 10
    );
    assert!(
        memory < memory_after_warm_up + (32 << 20),
        "the raylet grew from {memory_after_warm_up} to {memory} bytes in {RUNS} runs"
    );
}

/// Private resident memory (`RssAnon`) of process `pid`, in bytes.
fn private_memory(pid: u32) -> u64 {
    photon_raylet::procfs::private_bytes(pid).expect("the raylet is running")
}

/// Item 5 of the real-hosts issue: `$PHOTON_HOME` private, `photon stop`
/// careful; item 4: the token out of argv, the HTTP side behind it.
mod access {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use support::http_request;

    fn pid_record(home: &Path, pid: u32, started: u64, exe: &str) {
        let dir = home.join("pids");
        std::fs::create_dir_all(&dir).unwrap();
        let record = serde_json::json!({
            "role": "raylet", "pid": pid, "started": started, "exe": exe, "address": "127.0.0.1:1",
        });
        std::fs::write(dir.join(format!("{pid}.json")), record.to_string()).unwrap();
    }

    #[test]
    fn stop_never_signals_a_process_that_reuses_a_recorded_pid() {
        let home = tempfile::tempdir().unwrap();
        let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = bystander.id();
        let started = photon_proto::process_started(pid).unwrap();
        // A stale record of a photon process whose pid the system gave to `sleep`.
        pid_record(home.path(), pid, started + 1, PHOTON);
        let output = Command::new(PHOTON)
            .env("PHOTON_HOME", home.path())
            .args(["stop", "--grace-period", "1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.contains(&format!("(pid {pid}) had already ended")),
            "{stdout}"
        );
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "sleep was signalled"
        );
        assert!(!home.path().join(format!("pids/{pid}.json")).exists());

        // The right start time but another executable: still not ours.
        pid_record(home.path(), pid, started, PHOTON);
        let output = Command::new(PHOTON)
            .env("PHOTON_HOME", home.path())
            .args(["stop", "--grace-period", "1"])
            .output()
            .unwrap();
        assert!(output.status.success());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "sleep was signalled"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    #[test]
    fn a_photon_home_others_can_write_or_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        let run = |args: &[&str]| {
            Command::new(PHOTON)
                .env("PHOTON_HOME", &home)
                .env_remove("PHOTON_TOKEN")
                .args(args)
                .output()
                .unwrap()
        };
        for args in [
            &["status"][..],
            &["start", "--head", "--block", "--port", "0"][..],
        ] {
            let stderr = failure(&run(args));
            assert!(
                stderr.contains(&home.display().to_string())
                    && stderr.contains("writable by other users")
                    && stderr.contains("chmod 700"),
                "{args:?}: {stderr}"
            );
        }
        assert!(!home.join("cluster.json").exists());
        // Owned by someone else (only root can give a directory away).
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        if std::os::unix::fs::chown(&home, Some(65534), None).is_ok() {
            let stderr = failure(&run(&["status"]));
            assert!(stderr.contains("owned by uid 65534"), "{stderr}");
        } else {
            eprintln!("not root: the foreign-owner case is left out");
        }
    }

    /// Every live process whose command line contains `needle`.
    fn processes_with_in_argv(needle: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|argv| String::from_utf8_lossy(&argv).replace('\0', " "))
            .filter(|argv| argv.contains(needle))
            .collect()
    }

    /// Runs `photon stop` in `home` when dropped, so a failed assert leaves
    /// no detached daemon behind.
    struct StopOnDrop<'a>(&'a Path);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(PHOTON)
                .env("PHOTON_HOME", self.0)
                .arg("stop")
                .output();
        }
    }

    #[test]
    fn the_token_never_appears_in_a_photon_processs_argv() {
        let home = tempfile::tempdir().unwrap();
        let _stop = StopOnDrop(home.path());
        let token_file = home.path().join("my-token");
        let token = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let run = |args: &[&str]| photon_in(home.path(), args);
        let file = token_file.to_str().unwrap();
        let started = run(&[
            "start",
            "--head",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--token-file",
            file,
            "--object-store-memory",
            STORE,
        ]);
        let address = started
            .split("--address ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        run(&[
            "start",
            "--address",
            address,
            "--token-file",
            file,
            "--object-store-memory",
            STORE,
        ]);
        // Both daemons run with the token, and no argv holds it.
        let status: Value = serde_json::from_str(&run(&["status", "--json"])).unwrap();
        assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
        let leaked = processes_with_in_argv(token);
        run(&["stop"]);
        assert!(leaked.is_empty(), "the token is in argv: {leaked:?}");
    }

    #[test]
    fn http_beyond_loopback_needs_the_token_except_probes_and_opened_metrics() {
        let mut cluster = Cluster::start_with(&["--host", "0.0.0.0"]);
        let status = cluster.status();
        let head_http = status["metrics_address"].as_str().unwrap().to_string();
        assert!(!head_http.starts_with("0.0.0.0"), "{head_http}");
        let bearer = format!("Bearer {}", cluster.token);
        for path in ["/api/status", "/", "/metrics", "/api/jobs/0badc0de/logs"] {
            let refused = http_request(&head_http, "GET", path, &[], "");
            assert_eq!(refused.code, 401, "{path}: {}", refused.body);
            let wrong = http_request(
                &head_http,
                "GET",
                path,
                &[("Authorization", "Bearer nope")],
                "",
            );
            assert_eq!(wrong.code, 401, "{path} with a wrong token");
        }
        let authed = http_request(
            &head_http,
            "GET",
            "/api/status",
            &[("Authorization", &bearer)],
            "",
        );
        assert_eq!(authed.code, 200, "{}", authed.body);
        assert!(
            authed
                .body
                .contains(&status["cluster_id"].as_str().unwrap().to_string())
        );
        for probe in ["/healthz", "/readyz"] {
            assert_eq!(
                http_request(&head_http, "GET", probe, &[], "").code,
                200,
                "{probe}"
            );
        }
        // A browser gets the sign-in page; signing in sets a cookie that works.
        let page = http_request(&head_http, "GET", "/", &[("Accept", "text/html")], "");
        assert!(
            page.code == 401 && page.body.contains("action=\"/login\""),
            "{}",
            page.body
        );
        let form = [("Content-Type", "application/x-www-form-urlencoded")];
        let bad = http_request(&head_http, "POST", "/login", &form, "token=nope");
        assert!(bad.code == 401 && bad.header("set-cookie").is_none());
        let login = http_request(
            &head_http,
            "POST",
            "/login",
            &form,
            &format!("token={}", cluster.token),
        );
        let cookie = login.header("set-cookie").expect("a cookie").to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(
            !cookie.contains(&cluster.token),
            "the cookie is the token: {cookie}"
        );
        let cookie = cookie.split(';').next().unwrap();
        let page = http_request(&head_http, "GET", "/", &[("Cookie", cookie)], "");
        assert_eq!(page.code, 200);

        // A raylet beyond loopback with --open-metrics: /metrics open, the rest not.
        let pid =
            cluster.add_raylet(&["--host", "0.0.0.0", "--metrics-port", "0", "--open-metrics"]);
        let node = cluster.node_by_pid(pid);
        let raylet_http = node["metrics_address"].as_str().unwrap();
        assert!(!raylet_http.starts_with("0.0.0.0"), "{raylet_http}");
        let metrics = http_request(raylet_http, "GET", "/metrics", &[], "");
        assert!(
            metrics.code == 200 && metrics.body.contains("photon_workers"),
            "{}",
            metrics.code
        );
        assert_eq!(
            http_request(raylet_http, "GET", "/login", &[], "").code,
            200
        );
        assert_eq!(
            http_request(&head_http, "GET", "/metrics", &[], "").code,
            401
        );
    }
}

/// Item 2 of the real-hosts issue: what a node advertises.
mod advertise {
    use super::*;

    #[test]
    fn a_raylet_bound_to_every_interface_is_advertised_at_a_dialable_address() {
        let mut cluster = Cluster::start();
        let pid = cluster.add_raylet(&["--host", "0.0.0.0"]);
        let node = cluster.node_by_pid(pid);
        let address = node["address"].as_str().unwrap();
        // The head is on loopback, so loopback is the route to it.
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        std::net::TcpStream::connect(address).expect("the advertised address answers");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(cluster.node_by_pid(pid)["unreachable"], "", "{node}");
        // Beyond loopback without TLS, the node says so.
        let log = std::fs::read_to_string(cluster.home.path().join("raylet-1.log")).unwrap();
        assert!(log.contains("beyond loopback without TLS"), "{log}");
    }

    #[test]
    fn a_raylet_advertised_where_nobody_listens_is_reported_unreachable() {
        let mut cluster = Cluster::start();
        // Bound to 127.0.0.1, advertised as 127.0.0.2: nothing listens there.
        let pid = cluster.add_raylet(&["--advertise-address", "127.0.0.2"]);
        let reason = wait_until(Duration::from_secs(10), "the unreachable report", || {
            let node = cluster.node_by_pid(pid);
            let reason = node["unreachable"].as_str().unwrap().to_string();
            (!reason.is_empty()).then_some(reason)
        });
        assert!(
            reason.contains("127.0.0.2:") && reason.contains("--advertise-address"),
            "{reason}"
        );
        let human = cluster.status_text();
        assert!(human.contains("UNREACHABLE"), "{human}");
        let refused = failure(
            &cluster
                .command()
                .args([
                    "start",
                    "--block",
                    "--address",
                    &cluster.address,
                    "--advertise-address",
                    "0.0.0.0",
                ])
                .output()
                .unwrap(),
        );
        assert!(
            refused.contains("not an address other nodes can dial"),
            "{refused}"
        );
    }
}

/// Item 6 of the real-hosts issue: a relative `--input` or `--output` is the
/// caller's, wherever the workers run.
#[test]
fn a_relative_input_and_output_are_the_callers_not_the_raylets() {
    let mut cluster = Cluster::start();
    let raylet_dir = cluster.home.path().join("raylet-cwd");
    std::fs::create_dir(&raylet_dir).unwrap();
    let raylet_session = cluster.home.path().join("raylet-session");
    cluster.add_raylet_in(
        &raylet_dir,
        &["--session-dir", raylet_session.to_str().unwrap()],
    );
    let (dir, model, corpus) = model_and_corpus(&cluster, 3, 60);
    let caller_dir = dir.path().join("caller");
    std::fs::create_dir(&caller_dir).unwrap();
    std::fs::rename(&corpus, caller_dir.join("corpus.parquet")).unwrap();
    // A same-named file of 7 rows where the raylet and its workers run.
    let decoy = cluster
        .command()
        .args(["sample-corpus", "--rows", "7", "--output"])
        .arg(raylet_dir.join("corpus.parquet"))
        .output()
        .unwrap();
    assert!(decoy.status.success());
    // `photon embed --input corpus.parquet --output OUT`, run in the caller's directory.
    let embed_relative = |out: &str| {
        embed_on(
            &cluster,
            Path::new("corpus.parquet"),
            Path::new(out),
            &model,
        )
        .current_dir(&caller_dir)
        .output()
        .unwrap()
    };
    let output = embed_relative("out");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(caller_dir.join("out/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 60, "{manifest}");
    assert_eq!(
        output_ids(&caller_dir.join("out")),
        (0..60).collect::<Vec<i64>>()
    );
    assert!(
        !raylet_dir.join("out").exists(),
        "written where the raylet runs"
    );
    // --session-dir is the raylet's: its workers' output files are there.
    let worker_files = std::fs::read_dir(raylet_session.join("logs"))
        .unwrap()
        .count();
    assert!(
        worker_files > 0,
        "no worker files in the raylet's session dir"
    );

    // The caller's file gone: the error names the absolute path, not the decoy.
    std::fs::remove_file(caller_dir.join("corpus.parquet")).unwrap();
    let stderr = failure(&embed_relative("out2"));
    assert!(
        stderr.contains(&caller_dir.join("corpus.parquet").display().to_string()),
        "{stderr}"
    );
}

/// Item 3 of the real-hosts issue: TLS on every listener, certificates made
/// by the head (`--tls auto`), one connection file for another machine.
mod tls {
    use super::*;
    use crate::support::https_request;
    use std::process::Stdio;

    /// `photon` as on another machine: its own empty home, no token or CA
    /// in the environment.
    fn elsewhere() -> (tempfile::TempDir, Command) {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(PHOTON);
        command
            .env("PHOTON_HOME", home.path())
            .env_remove("PHOTON_TOKEN")
            .env_remove("PHOTON_ADDRESS")
            .env_remove("PHOTON_TLS_CA");
        (home, command)
    }

    #[test]
    fn a_tls_cluster_joined_by_connection_file_runs_a_job_and_refuses_callers_without_its_ca() {
        let mut cluster = Cluster::start_with(&["--tls", "auto"]);
        let connection = cluster.session.join("connection.json");
        let ca = cluster.session.join("tls/ca.pem");
        let file: Value = serde_json::from_slice(&std::fs::read(&connection).unwrap()).unwrap();
        assert_eq!(file["address"], cluster.address.as_str());
        assert_eq!(file["token"], cluster.token.as_str());
        assert_eq!(
            file["ca_certificate"].as_str().unwrap(),
            std::fs::read_to_string(&ca).unwrap()
        );

        // A raylet "on another machine" joins with the connection file alone.
        let (raylet_home, mut join) = elsewhere();
        let log = cluster.home.path().join("tls-raylet.log");
        let child = join
            .args([
                "start",
                "--block",
                "--num-cpus",
                "2",
                "--object-store-memory",
                STORE,
            ])
            .arg("--connection-file")
            .arg(&connection)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        cluster.children.push(child);
        wait_until(
            Duration::from_secs(20),
            "the TLS raylet to register",
            || (cluster.alive_nodes().len() == 1).then_some(()),
        );
        // Its certificate came from the head and is kept only while it runs.
        let pid = cluster.children.last().unwrap().id();
        let node_tls = raylet_home.path().join(format!("tls-{pid}"));
        assert!(node_tls.join("node.pem").is_file() && node_tls.join("node.key").is_file());

        // A job from a third machine: driver, raylet, workers and object
        // transfers all over TLS.
        let (dir, model, corpus) = model_and_corpus(&cluster, 5, 120);
        let out = dir.path().join("out");
        let (_driver_home, mut driver) = elsewhere();
        let embedded = driver
            .args(["embed", "--id-column", "id", "--actors", "2..2", "--json"])
            .arg("--connection-file")
            .arg(&connection)
            .arg("--input")
            .arg(&corpus)
            .arg("--output")
            .arg(&out)
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap();
        assert!(
            embedded.status.success(),
            "{}\nraylet: {}",
            String::from_utf8_lossy(&embedded.stderr),
            std::fs::read_to_string(&log).unwrap()
        );
        assert_eq!(output_ids(&out), (0..120).collect::<Vec<_>>());

        // Without the CA, a caller gets an error that says what to give.
        let (_home, mut plain) = elsewhere();
        let refused = failure(
            &plain
                .args(["status", "--address", &cluster.address])
                .env("PHOTON_TOKEN", &cluster.token)
                .output()
                .unwrap(),
        );
        assert!(
            refused.contains("needs its CA: --connection-file or --tls-ca"),
            "{refused}"
        );
        // With another CA, the head's certificate is refused.
        let other = tempfile::tempdir().unwrap();
        photon_head::CertificateAuthority::load_or_create(other.path()).unwrap();
        let (_home, mut impostor) = elsewhere();
        let refused = failure(
            &impostor
                .args(["status", "--address", &cluster.address, "--tls-ca"])
                .arg(other.path().join("ca.pem"))
                .env("PHOTON_TOKEN", &cluster.token)
                .output()
                .unwrap(),
        );
        assert!(refused.contains("invalid peer certificate"), "{refused}");
        // With the CA and the token, it is answered.
        let (_home, mut trusted) = elsewhere();
        let status = trusted
            .args(["status", "--address", &cluster.address, "--tls-ca"])
            .arg(&ca)
            .env("PHOTON_TOKEN", &cluster.token)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        assert!(String::from_utf8_lossy(&status.stdout).contains("status page: https://"));

        // The HTTP side speaks only TLS, with the same certificate.
        let http = cluster.status()["metrics_address"]
            .as_str()
            .unwrap()
            .to_string();
        let health = https_request(&http, &ca, "GET", "/healthz", &[]).unwrap();
        assert_eq!((health.code, health.body.as_str()), (200, "ok\n"));
        let refused =
            https_request(&http, &other.path().join("ca.pem"), "GET", "/healthz", &[]).unwrap_err();
        assert!(refused.contains("invalid peer certificate"), "{refused}");
        let mut plaintext = std::net::TcpStream::connect(&http).unwrap();
        std::io::Write::write_all(&mut plaintext, b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        plaintext
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut plaintext, &mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("ok"),
            "a plaintext request was answered"
        );

        // A job's SDK driver, started by the head, and its workers: over TLS.
        let (_home, mut submitter) = elsewhere();
        let job = submitter
            .args(["job", "submit"])
            .arg("--connection-file")
            .arg(&connection)
            .arg("--")
            .arg(crate::support::job_example())
            .output()
            .unwrap();
        assert!(
            job.status.success(),
            "{}{}",
            String::from_utf8_lossy(&job.stdout),
            String::from_utf8_lossy(&job.stderr)
        );

        // Stopped, the raylet leaves no key behind.
        cluster.kill(pid, "-TERM");
        assert!(
            !node_tls.exists(),
            "{} outlived its raylet",
            node_tls.display()
        );
    }

    #[test]
    fn a_head_restarted_without_tls_on_the_same_session_is_called_in_plaintext() {
        let mut cluster = Cluster::start_with(&["--tls", "auto"]);
        assert!(cluster.status_text().contains("status page: https://"));
        let head = cluster.head_pid();
        cluster.kill(head, "-9");
        cluster.head_args.clear();
        cluster.start_head(0);
        // Its CA is still in the session's tls/, but its connection file
        // (rewritten at start) has none: local commands call in plaintext.
        assert!(cluster.session.join("tls/ca.pem").exists());
        let status = cluster.status_text();
        assert!(status.contains("status page: http://"), "{status}");
    }

    #[test]
    fn tls_without_the_clusters_ca_is_a_clear_error() {
        let cluster = Cluster::start();
        let (_home, mut join) = elsewhere();
        let refused = failure(
            &join
                .args([
                    "start",
                    "--block",
                    "--tls",
                    "auto",
                    "--address",
                    &cluster.address,
                ])
                .env("PHOTON_TOKEN", &cluster.token)
                .output()
                .unwrap(),
        );
        assert!(
            refused.contains("TLS needs the cluster's CA: give --connection-file"),
            "{refused}"
        );
        // A plaintext head issues no certificates.
        let (_home, mut join) = elsewhere();
        let ca = tempfile::tempdir().unwrap();
        photon_head::CertificateAuthority::load_or_create(ca.path()).unwrap();
        let refused = failure(
            &join
                .args([
                    "start",
                    "--block",
                    "--address",
                    &cluster.address,
                    "--tls-ca",
                ])
                .arg(ca.path().join("ca.pem"))
                .env("PHOTON_TOKEN", &cluster.token)
                .output()
                .unwrap(),
        );
        assert!(
            refused.contains("over TLS for this node's certificate"),
            "{refused}"
        );
    }
}

/// TLS with certificates of the user's own CA (`--tls-cert/--tls-key/--tls-ca`).
mod own_certificates {
    use super::*;

    /// A CA in `dir` and a certificate for `hosts` signed by it:
    /// (`ca.pem`, `node.pem`, `node.key`).
    fn certificates(dir: &Path, hosts: &[&str]) -> [String; 3] {
        let authority = photon_head::CertificateAuthority::load_or_create(dir).unwrap();
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        authority.issue_into(&hosts, dir).unwrap();
        ["ca.pem", "node.pem", "node.key"].map(|f| dir.join(f).display().to_string())
    }

    #[test]
    fn nodes_serve_their_own_certificates_and_one_that_names_another_host_is_reported() {
        let pki = tempfile::tempdir().unwrap();
        let [ca, cert, key] = certificates(pki.path(), &["127.0.0.1"]);
        let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
        let mut cluster = Cluster::start_with(&tls);
        // Local commands and other machines find the CA in the connection file.
        let file: Value = serde_json::from_slice(
            &std::fs::read(cluster.session.join("connection.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            file["ca_certificate"].as_str().unwrap(),
            std::fs::read_to_string(&ca).unwrap()
        );
        let good = cluster.add_raylet(&tls);
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(cluster.node_by_pid(good)["unreachable"], "");

        // A certificate of the same CA for another address: the raylet
        // reaches the head, the head cannot verify the raylet.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::copy(pki.path().join("ca.key"), elsewhere.path().join("ca.key")).unwrap();
        std::fs::copy(&ca, elsewhere.path().join("ca.pem")).unwrap();
        let [_, wrong_cert, wrong_key] = certificates(elsewhere.path(), &["10.9.9.9"]);
        let wrong = cluster.add_raylet(&[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &wrong_cert,
            "--tls-key",
            &wrong_key,
        ]);
        let reason = wait_until(Duration::from_secs(10), "the unreachable report", || {
            let reason = cluster.node_by_pid(wrong)["unreachable"]
                .as_str()
                .unwrap()
                .to_string();
            (!reason.is_empty()).then_some(reason)
        });
        assert!(
            reason.contains("not valid for name") && reason.contains("certificate names"),
            "{reason}"
        );

        // A head given a certificate without its CA is refused before it starts.
        let refused = failure(
            &cluster
                .command()
                .args(["start", "--head", "--block", "--port", "0"])
                .args(["--tls-cert", &cert, "--tls-key", &key])
                .output()
                .unwrap(),
        );
        assert!(refused.contains("--tls-cert needs --tls-ca"), "{refused}");
    }
}

#[test]
fn an_actor_given_a_gpu_its_node_cannot_see_fails_naming_the_node_and_the_cluster_stays_up() {
    if photon_inference::gpu::visible_gpus() != Ok(0) {
        eprintln!("SKIPPED: a GPU is visible here; scripts/gpu-check covers this machine");
        return;
    }
    let mut cluster = Cluster::start();
    // A raylet told it has a GPU this host does not have.
    let pid = cluster.add_raylet(&["--num-gpus", "1"]);
    let node = cluster.node_by_pid(pid)["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (dir, model, corpus) = model_and_corpus(&cluster, 4, 50);
    let out = dir.path().join("out");
    let run = embed_on(&cluster, &corpus, &out, &model)
        .args(["--num-gpus", "1"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("node {node}: an actor given 1 GPU(s)"))
            && stderr.contains("no CUDA GPU is visible")
            && stderr.contains("CUDA_VISIBLE_DEVICES=\"0\""),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
    // The cluster is still there, and runs the same job on the CPU.
    let rerun = embed_on(&cluster, &corpus, &out, &model).output().unwrap();
    assert!(rerun.status.success(), "{}", failure(&rerun));
    assert_eq!(output_ids(&out), (0..50).collect::<Vec<i64>>());
}
