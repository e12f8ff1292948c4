//! `photon job` against real clusters on loopback: submission, logs,
//! outcomes, stop, a head restart, bad input; the metrics and health
//! endpoints; the status page in headless Chromium.

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, failure, http_get, job_example, wait_until};

/// A head and two 1-CPU raylets, each serving metrics.
fn two_node_cluster() -> Cluster {
    let mut cluster = Cluster::start();
    cluster.add_raylet(&["--metrics-port", "0"]);
    cluster.add_raylet(&["--metrics-port", "0"]);
    cluster
}

fn photon(cluster: &Cluster, args: &[&str]) -> Output {
    cluster
        .command()
        .args(args)
        .args(["--address", &cluster.address])
        .output()
        .unwrap()
}

/// `photon job submit [flags] -- job_example [job args]`.
fn submit(cluster: &Cluster, flags: &[&str], job_args: &[&str]) -> Output {
    submit_program(cluster, flags, job_example().as_os_str(), job_args)
}

/// `photon job submit [flags] -- program [args]`.
fn submit_program(
    cluster: &Cluster,
    flags: &[&str],
    program: &std::ffi::OsStr,
    args: &[&str],
) -> Output {
    cluster
        .command()
        .args(["job", "submit", "--address", &cluster.address])
        .args(flags)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn job_status(cluster: &Cluster, id: &str) -> Value {
    let output = photon(cluster, &["job", "status", id, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn submitted_id(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).trim().to_string()
}

/// Samples of a Prometheus text scrape, which must parse.
fn scrape(address: &str) -> Vec<prometheus_parse::Sample> {
    let (code, body) = http_get(address, "/metrics");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("metrics do not parse: {e}\n{body}"))
        .samples
}

fn sample(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match found.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn jobs_log_driver_and_worker_lines_and_end_with_their_exit_code() {
    let cluster = two_node_cluster();
    let output = submit(&cluster, &["--name", "squares"], &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("driver: sum of squares 1..=4 is 30"),
        "{stdout}"
    );
    // Worker lines, prefixed with their actor class or `worker`.
    assert!(stdout.contains("(Tally pid="), "{stdout}");
    assert!(stdout.contains(") tally now 30"), "{stdout}");
    for x in 1..=4 {
        assert!(stdout.contains(&format!(") squaring {x}\n")), "{stdout}");
    }
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    let id = list[0]["job_id"].as_str().unwrap().to_string();
    let status = job_status(&cluster, &id);
    assert_eq!(status["state"], "SUCCEEDED");
    assert_eq!(status["exit_code"], 0);
    assert_eq!(status["name"], "squares");
    let logs = text(&photon(&cluster, &["job", "logs", &id]).stdout);
    assert!(
        logs.contains("(worker pid=") && logs.contains("driver: job"),
        "{logs}"
    );

    let output = submit(&cluster, &[], &["--fail", "3"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("FAILED: the driver exited with code 3"));
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    let failed = list[1]["job_id"].as_str().unwrap();
    let status = job_status(&cluster, failed);
    assert_eq!(status["state"], "FAILED");
    assert_eq!(status["exit_code"], 3);
    let last_lines: Vec<&str> = status["last_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        last_lines.contains(&"driver: failing on purpose with exit code 3"),
        "{last_lines:?}"
    );
    let human = text(&photon(&cluster, &["job", "status", failed]).stdout);
    assert!(
        human.contains("last output:") && human.contains("failing on purpose"),
        "{human}"
    );

    // The metrics agree with `photon status` and the jobs above.
    let cluster_status = cluster.status();
    let head_metrics = cluster_status["metrics_address"]
        .as_str()
        .unwrap()
        .to_string();
    let samples = scrape(&head_metrics);
    assert_eq!(
        sample(&samples, "photon_jobs", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(sample(&samples, "photon_jobs", &[("state", "failed")]), 1.0);
    let nodes = cluster_status["nodes"].as_array().unwrap();
    assert_eq!(
        sample(&samples, "photon_nodes", &[("state", "alive")]),
        nodes.len() as f64
    );
    let cpus: f64 = nodes
        .iter()
        .map(|n| n["total"]["CPU"].as_f64().unwrap())
        .sum();
    assert_eq!(
        sample(
            &samples,
            "photon_cluster_resource_capacity",
            &[("resource", "CPU")]
        ),
        cpus
    );
    assert_eq!(
        sample(&samples, "photon_actors", &[("state", "dead")]),
        2.0,
        "one per job"
    );
    for node in nodes {
        let id = node["node_id"].as_str().unwrap();
        let store = node["object_store_capacity"].as_f64().unwrap();
        assert_eq!(
            sample(
                &samples,
                "photon_node_object_store_capacity_bytes",
                &[("node", id)]
            ),
            store
        );
        let raylet = node["metrics_address"].as_str().unwrap();
        let raylet_samples = scrape(raylet);
        assert_eq!(
            sample(
                &raylet_samples,
                "photon_raylet_resource_capacity",
                &[("resource", "CPU")]
            ),
            node["total"]["CPU"].as_f64().unwrap()
        );
        assert_eq!(
            sample(
                &raylet_samples,
                "photon_object_store_capacity_bytes",
                &[("node", id)]
            ),
            store
        );
        assert_eq!(http_get(raylet, "/healthz").0, 200);
        assert_eq!(http_get(raylet, "/readyz"), (200, "ready\n".to_string()));
    }
    assert_eq!(
        http_get(&head_metrics, "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(http_get(&head_metrics, "/readyz").0, 200);
    let (code, log) = http_get(&head_metrics, &format!("/api/jobs/{id}/logs"));
    assert_eq!(code, 200);
    assert!(log.contains("sum of squares"), "{log}");
}

/// Pids of live processes whose environment names job `id`: its `sh`, its
/// driver and its workers.
fn processes_of_job(id: &str) -> Vec<u32> {
    let needle = format!("PHOTON_JOB_ID={id}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .filter(|pid| {
            // Zombies are ended processes waiting for their parent to reap them.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

#[test]
fn a_stopped_job_leaves_no_process_behind() {
    let cluster = two_node_cluster();
    let id = submitted_id(&submit(&cluster, &["--no-wait"], &["--hold", "600"]));
    wait_until(Duration::from_secs(60), "the job to hold", || {
        let logs = text(&photon(&cluster, &["job", "logs", &id]).stdout);
        logs.contains("driver: holding").then_some(())
    });
    let running = processes_of_job(&id);
    // sh + driver + the actor's worker at least.
    assert!(running.len() >= 3, "{running:?}");
    assert_eq!(job_status(&cluster, &id)["state"], "RUNNING");

    let output = photon(&cluster, &["job", "stop", &id, "--grace-period", "2"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("STOPPED"),
        "{}",
        text(&output.stderr)
    );
    let status = job_status(&cluster, &id);
    assert_eq!(status["state"], "STOPPED");
    wait_until(Duration::from_secs(5), "the job's processes to end", || {
        processes_of_job(&id).is_empty().then_some(())
    });
    // Stopping it again says it has ended.
    let again = photon(&cluster, &["job", "stop", &id]);
    assert!(again.status.success());
    assert!(
        text(&again.stderr).contains("already ended"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn a_job_running_through_a_head_kill_9_is_still_listed_and_finishes() {
    let mut cluster = two_node_cluster();
    let id = submitted_id(&submit(&cluster, &["--no-wait"], &["--hold", "4"]));
    wait_until(Duration::from_secs(60), "the job to hold", || {
        let logs = text(&photon(&cluster, &["job", "logs", &id]).stdout);
        logs.contains("driver: holding").then_some(())
    });
    let head = cluster.head_pid();
    cluster.kill(head, "-9");
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    cluster.start_head(port);
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    let job = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id.as_str())
        .unwrap_or_else(|| panic!("job {id} missing after the restart: {list}"));
    assert!(
        job["state"] == "RUNNING" || job["state"] == "SUCCEEDED",
        "{job}"
    );
    // The restarted head adopted the driver and reads its exit code.
    let status = wait_until(Duration::from_secs(30), "the adopted job to end", || {
        let status = job_status(&cluster, &id);
        (status["state"] != "RUNNING").then_some(status)
    });
    assert_eq!(status["state"], "SUCCEEDED", "{status}");
    assert_eq!(status["exit_code"], 0);
}

/// Runs `photon` with `args` and returns its one-line error.
fn one_line_error(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.command().args(args).output().unwrap();
    let stderr = failure(&output);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    lines[0].to_string()
}

#[test]
fn bad_input_gets_one_line_errors_with_a_hint() {
    let cluster = Cluster::start();
    let address = cluster.address.as_str();
    let on = ["--address", address];
    let error = one_line_error(
        &cluster,
        &[&["job", "submit"], &on[..], &["--", "./no-such-job"]].concat(),
    );
    assert!(
        error.contains("./no-such-job not found") && error.contains("give the path"),
        "{error}"
    );
    let error = one_line_error(
        &cluster,
        &[&["job", "submit"], &on[..], &["--", "no-such-cmd"]].concat(),
    );
    assert!(error.contains("not a command on PATH"), "{error}");
    for command in ["status", "logs", "stop"] {
        let error = one_line_error(&cluster, &[&["job", command, "0badc0de"], &on[..]].concat());
        assert!(
            error.contains("no job \"0badc0de\"") && error.contains("photon job list"),
            "{error}"
        );
    }
    let error = one_line_error(&cluster, &["job", "list", "--address", "127.0.0.1:1"]);
    assert!(
        error.contains("cannot reach the head at 127.0.0.1:1") && error.contains("--address"),
        "{error}"
    );
    let wrong = cluster.home.path().join("wrong-token");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let error = one_line_error(
        &cluster,
        &[
            "job",
            "list",
            "--address",
            address,
            "--token-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(
        error.contains("wrong cluster token") && error.contains("PHOTON_TOKEN"),
        "{error}"
    );
    let error = one_line_error(
        &cluster,
        &[
            &["job", "submit", "--env", "NOEQUALS"],
            &on[..],
            &["--", "sh"],
        ]
        .concat(),
    );
    assert!(
        error.contains("--env \"NOEQUALS\" is not KEY=VALUE"),
        "{error}"
    );
    // Nothing was submitted by any of them.
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    assert_eq!(list, Value::Array(Vec::new()));
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
}

#[test]
fn the_status_page_renders_the_clusters_nodes_and_jobs_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        // `.ci/run` installs Debian's chromium; CI must not skip this.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let cluster = two_node_cluster();
    let output = submit(&cluster, &["--name", "page-check"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status = cluster.status();
    let url = format!("http://{}/", status["metrics_address"].as_str().unwrap());
    let profile = tempfile::tempdir().unwrap();
    let browse = |extra: &[&str]| {
        std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=5000", "--window-size=1280,900"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = browse(&["--dump-dom"]);
    let dom_text = text(&dom.stdout);
    assert!(
        dom_text.contains("data-loaded=\"true\""),
        "{dom_text}\n{}",
        text(&dom.stderr)
    );
    for node in status["nodes"].as_array().unwrap() {
        let id = node["node_id"].as_str().unwrap();
        assert!(
            dom_text.contains(id),
            "node {id} not on the page: {dom_text}"
        );
    }
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    let job = list[0]["job_id"].as_str().unwrap();
    assert!(
        dom_text.contains(job) && dom_text.contains("page-check"),
        "{dom_text}"
    );
    assert!(dom_text.contains("succeeded"), "{dom_text}");

    let screenshot = cluster.home.path().join("status-page.png");
    let shot = browse(&[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", text(&shot.stderr)));
    assert_eq!(&png[1..4], b"PNG");
    // A blank page compresses to a few KiB; tables, bars and text do not.
    assert!(
        png.len() > 20_000,
        "screenshot of {} bytes looks empty",
        png.len()
    );
    if let Ok(dir) = std::env::var("PHOTON_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, PathBuf::from(dir).join("status-page.png")).unwrap();
    }
}

#[test]
fn the_working_dir_and_env_reach_the_driver() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "from the working dir\n").unwrap();
    let script = dir.path().join("run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat data.txt\necho \"mode=$MODE job=$PHOTON_JOB_ID\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let working_dir = dir.path().to_str().unwrap();
    let flags = ["--working-dir", working_dir, "--env", "MODE=fast"];
    let output = submit_program(&cluster, &flags, "run.sh".as_ref(), &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    assert!(stdout.contains("from the working dir\n"), "{stdout}");
    let list: Value =
        serde_json::from_slice(&photon(&cluster, &["job", "list", "--json"]).stdout).unwrap();
    let id = list[0]["job_id"].as_str().unwrap();
    assert!(stdout.contains(&format!("mode=fast job={id}")), "{stdout}");
    assert_eq!(list[0]["entrypoint"], "./run.sh");
}

#[test]
fn the_working_dir_reaches_every_worker_not_only_the_driver() {
    let mut cluster = Cluster::start();
    // The raylet and its workers run elsewhere than the working dir.
    let raylet_dir = tempfile::tempdir().unwrap();
    cluster.add_raylet_in(raylet_dir.path(), &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    std::fs::write(
        dir.path().join("notes/today.txt"),
        "packed for the workers\n",
    )
    .unwrap();
    let working_dir = dir.path().to_str().unwrap();
    let output = submit(
        &cluster,
        &["--working-dir", working_dir],
        &["--read", "notes/today.txt"],
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("driver: a worker read notes/today.txt: packed for the workers"),
        "{stdout}"
    );
}

/// A driver script with a working dir of its own (so each job has its own package).
fn script_job(dir: &std::path::Path, body: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("run.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("data.txt"), dir.display().to_string()).unwrap();
    dir.to_str().unwrap().to_string()
}

fn listed_ids(cluster: &Cluster) -> Vec<String> {
    let list: Value =
        serde_json::from_slice(&photon(cluster, &["job", "list", "--json"]).stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|job| job["job_id"].as_str().unwrap().to_string())
        .collect()
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[test]
fn finished_jobs_past_the_retention_and_deleted_jobs_leave_no_files() {
    let cluster = Cluster::start_with(&["--job-retention-count", "2"]);
    let dirs = tempfile::tempdir().unwrap();
    let jobs = cluster.session.join("jobs");
    let packages = cluster.session.join("packages");
    let mut ids = Vec::new();
    for i in 0..3 {
        let working_dir = script_job(&dirs.path().join(format!("job-{i}")), "cat data.txt");
        let output = submit_program(
            &cluster,
            &["--working-dir", &working_dir],
            "run.sh".as_ref(),
            &[],
        );
        assert!(output.status.success(), "{}", text(&output.stderr));
        ids.push(listed_ids(&cluster).pop().unwrap());
    }
    // The oldest finished job goes with its directory and its working dir's
    // package (the program, run.sh, is in the working dir).
    wait_until(
        Duration::from_secs(10),
        "the oldest job to be deleted",
        || (listed_ids(&cluster) == ids[1..]).then_some(()),
    );
    assert!(!jobs.join(&ids[0]).exists());
    assert!(jobs.join(&ids[1]).exists() && jobs.join(&ids[2]).exists());
    assert_eq!(files_in(&packages), 2, "the kept jobs' working dirs");

    let output = photon(&cluster, &["job", "delete", &ids[1]]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains(&format!("deleted job {}", ids[1])),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(listed_ids(&cluster), ids[2..]);
    assert!(!jobs.join(&ids[1]).exists());
    assert_eq!(files_in(&packages), 1);

    // A running job is not deleted; an unknown one is named.
    let working_dir = script_job(&dirs.path().join("sleeper"), "sleep 600");
    let sleeper = submitted_id(&submit_program(
        &cluster,
        &["--working-dir", &working_dir, "--no-wait"],
        "run.sh".as_ref(),
        &[],
    ));
    let refused = photon(&cluster, &["job", "delete", &sleeper]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(
        message.contains("has not ended")
            && message.contains(&format!("photon job stop {sleeper}")),
        "{message}"
    );
    assert!(jobs.join(&sleeper).exists());
    let unknown = photon(&cluster, &["job", "delete", "0000beef"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no job \"0000beef\""),
        "{}",
        text(&unknown.stderr)
    );
    let stopped = photon(&cluster, &["job", "stop", &sleeper, "--grace-period", "1"]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
}
