//! `s3://` read and write against a real S3-compatible server on loopback:
//! moto's server mode (`pip install 'moto[server]'`, which `.ci/run` does).
//! Built with the `s3` feature only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use photon_data::{Error, MapOptions, ProgressMode};

use crate::udfs::{Square, Tag};
use crate::{check, embedded};

/// A moto S3 server on a free loopback port, stopped on drop.
struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    fn start() -> Result<Self, Failed> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start moto (pip install 'moto[server]'): {e}"))?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("moto did not listen within 30 s (pip install 'moto[server]')".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// Creates a bucket (moto does not check signatures).
    fn create_bucket(&self, name: &str) -> Result<(), Failed> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        check(
            reply.starts_with("HTTP/1.1 200"),
            format!("create bucket: {reply}"),
        )
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_and_write_against_a_local_server() -> Result<(), Failed> {
    let server = MotoServer::start()?;
    server.create_bucket("photon")?;
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ENDPOINT", endpoint.as_str()),
    ] {
        // SAFETY: set before the cluster (and its threads) start; nextest
        // runs each test in its own process. Workers inherit them.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(key, value)
        };
    }
    // Inputs uploaded through the same store code the pipeline uses.
    let local = tempfile::tempdir()?;
    crate::write_input(local.path(), 2, 3_000, 1_000);
    let runtime = tokio::runtime::Runtime::new()?;
    for name in ["input-000.parquet", "input-001.parquet"] {
        let location = photon_data::location::resolve(&format!("s3://photon/in/{name}"))?;
        let bytes = std::fs::read(local.path().join(name))?;
        runtime.block_on(location.store.put(&location.path, bytes.into()))?;
    }
    let ctx = embedded(None);
    let pipeline = || {
        photon_data::read_parquet(&ctx, ["s3://photon/in/"])
            .select_columns(&["id"])
            .map_batches::<Square>(0, MapOptions::new().actors(1..=2))
            .progress(ProgressMode::Off)
    };
    let summary = pipeline().write_parquet("s3://photon/out", false)?;
    check(summary.rows == 6_000, format!("{} rows", summary.rows))?;
    // Read the output back from S3: the manifest and every id once.
    let rows = photon_data::read_parquet(&ctx, ["s3://photon/out/"])
        .progress(ProgressMode::Off)
        .count()?;
    check(rows == 6_000, format!("read back {rows} rows"))?;
    let mut ids: Vec<i64> = Vec::new();
    for batch in photon_data::read_parquet(&ctx, ["s3://photon/out/*.parquet"])
        .progress(ProgressMode::Off)
        .iter_batches()
    {
        let batch = batch?;
        let column = batch.column_by_name("id").ok_or("no id column")?;
        let column = column
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or("id is not Int64")?;
        ids.extend(column.values().iter());
    }
    ids.sort_unstable();
    check(
        ids == (0..6_000).collect::<Vec<i64>>(),
        format!("{} ids", ids.len()),
    )?;
    let manifest = photon_data::location::resolve("s3://photon/out/_SUCCESS")?;
    let manifest =
        runtime.block_on(async { manifest.store.get(&manifest.path).await?.bytes().await })?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    check(manifest["rows"] == 6_000, format!("{manifest}"))?;
    // A second write to the same place is refused.
    match pipeline().write_parquet("s3://photon/out", false) {
        Err(Error::Invalid(message)) => check(message.contains("not empty"), message)?,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    // The refused write gave the destination up; an overwrite leaves only
    // its own manifest and parts.
    let out = photon_data::location::resolve("s3://photon/out")?;
    let names = || -> Result<Vec<String>, Failed> {
        let listed: Vec<object_store::ObjectMeta> = runtime.block_on(
            futures::TryStreamExt::try_collect(out.store.list(Some(&out.path))),
        )?;
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|meta| meta.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    };
    check(
        !names()?.iter().any(|n| n == photon_data::WRITER_LOCK),
        format!("a lock left behind: {:?}", names()?),
    )?;
    let summary = pipeline().write_parquet("s3://photon/out", true)?;
    let mut expected: Vec<String> = summary.parts.iter().map(|p| p.name.clone()).collect();
    expected.push(photon_data::MANIFEST.to_string());
    expected.sort();
    check(
        names()? == expected,
        format!("{:?} vs {expected:?}", names()?),
    )?;
    // A destination another live writer holds is refused, naming it.
    let holder = serde_json::json!({
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim(),
        "pid": std::process::id(),
        "pid_started": null,
        "run": "elsewhere",
        "since_unix_ms": 0,
    });
    let lock = out.path.child(photon_data::WRITER_LOCK);
    runtime.block_on(out.store.put(&lock, serde_json::to_vec(&holder)?.into()))?;
    match pipeline().write_parquet("s3://photon/out", true) {
        Err(Error::Invalid(message)) => check(
            message.contains("is being written by") && message.contains("run elsewhere"),
            message,
        )?,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    Ok(())
}

/// Set on a writer process: the run number and destination, as JSON.
const WRITER_ENV: &str = "PHOTON_DATA_TEST_S3_WRITER";

/// Rows each run writes.
const ROWS: u64 = 4_000;

/// In writer mode (env set by [`an_overwrite_killed_at_any_moment_on_s3_leaves_one_complete_output`]):
/// overwrites the destination with `ROWS` ids tagged with the run's number
/// (slowed per block, so a kill can land anywhere), in this process.
pub fn writer_entry() {
    let Ok(spec) = std::env::var(WRITER_ENV) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("writer spec");
    let local = photon_data::Local::new().expect("local runner");
    photon_data::range(&local, ROWS)
        .repartition(8)
        .map_batches::<Tag>(
            spec["run"].as_i64().unwrap(),
            MapOptions::new().actors(1..=1),
        )
        .progress(ProgressMode::Off)
        .write_parquet(spec["url"].as_str().unwrap(), true)
        .expect("the write succeeds");
    std::process::exit(0);
}

/// Overwrite chaos on an object store (no rename: the manifest is the
/// commit): 20 overwrites, each SIGKILLed at a moment spread over a run and
/// its commit. After each, the destination holds exactly one complete
/// output by its manifest, the previous one or the new one (ids exact, one
/// run's tag), and a last overwrite succeeds and leaves only its own files.
pub fn an_overwrite_killed_at_any_moment_on_s3_leaves_one_complete_output() -> Result<(), Failed> {
    const KILLS: u32 = 20;
    let server = MotoServer::start()?;
    server.create_bucket("photon")?;
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let url = "s3://photon/chaos";
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ENDPOINT", endpoint.as_str()),
    ];
    for (key, value) in env {
        // SAFETY: set before any thread of this test starts; nextest runs
        // each test in its own process.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(key, value)
        };
    }
    let writer = |run: u32| -> Result<std::process::Child, Failed> {
        Ok(Command::new(std::env::current_exe()?)
            .env(
                WRITER_ENV,
                serde_json::json!({ "run": run, "url": url }).to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let local = photon_data::Local::new()?;
    // What readers see: every id once, all from one run; that run.
    let complete_run = || -> Result<i64, Failed> {
        let mut ids = Vec::new();
        let mut runs = std::collections::BTreeSet::new();
        for batch in photon_data::read_parquet(&local, [url])
            .progress(ProgressMode::Off)
            .iter_batches()
        {
            let batch = batch?;
            let column = |name: &str| -> Result<Vec<i64>, Failed> {
                let array = batch.column_by_name(name).ok_or(format!("no {name}"))?;
                let array = array
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .ok_or(format!("{name} is not Int64"))?;
                Ok(array.values().to_vec())
            };
            ids.extend(column("id")?);
            runs.extend(column("run")?);
        }
        ids.sort_unstable();
        check(
            ids == (0..ROWS as i64).collect::<Vec<i64>>() && runs.len() == 1,
            format!("{} ids from runs {runs:?}", ids.len()),
        )?;
        Ok(*runs.first().expect("one run"))
    };
    let started = Instant::now();
    check(writer(0)?.wait()?.success(), "the first write")?;
    let run_time = started.elapsed();
    check(complete_run()? == 0, "the first output")?;
    let mut last = 0;
    for run in 1..=KILLS {
        let mut child = writer(run)?;
        std::thread::sleep(run_time * run / KILLS);
        child.kill()?; // SIGKILL
        child.wait()?;
        let seen = complete_run()
            .map_err(|e| format!("after killing run {run}: {}", e.message().unwrap_or("")))?;
        check(
            seen == last || seen == i64::from(run),
            format!("after killing run {run}: the output of run {seen}, not {last} or {run}"),
        )?;
        last = seen;
    }
    check(writer(KILLS + 1)?.wait()?.success(), "the last write")?;
    check(
        complete_run()? == i64::from(KILLS + 1),
        "the last output replaced the others",
    )?;
    // Nothing of the killed runs is left: only the manifest and the parts it names.
    let runtime = tokio::runtime::Runtime::new()?;
    let out = photon_data::location::resolve(url)?;
    let listed: Vec<object_store::ObjectMeta> = runtime.block_on(
        futures::TryStreamExt::try_collect(out.store.list(Some(&out.path))),
    )?;
    let names: Vec<String> = listed
        .iter()
        .filter_map(|meta| meta.location.filename().map(str::to_string))
        .collect();
    check(
        names.iter().filter(|n| n.ends_with(".parquet")).count() == 8
            && names.iter().any(|n| n == photon_data::MANIFEST)
            && names.len() == 9,
        format!("left in the destination: {names:?}"),
    )?;
    Ok(())
}
