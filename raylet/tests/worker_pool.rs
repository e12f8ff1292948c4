//! The worker pool with real processes: environment, reuse, and exit reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use photon_proto::NodeId;
use photon_raylet::worker_pool::{
    ExitReason, WorkerExit, WorkerPool, WorkerPoolConfig, WorkerSpec,
};

fn shell(script: &str, env: &[(&str, &str)]) -> WorkerSpec {
    WorkerSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn pool(dir: &tempfile::TempDir, limit: Option<u64>, threshold: f64) -> std::sync::Arc<WorkerPool> {
    pool_checking_every(dir, limit, threshold, Duration::from_millis(50))
}

fn pool_checking_every(
    dir: &tempfile::TempDir,
    limit: Option<u64>,
    threshold: f64,
    period: Duration,
) -> std::sync::Arc<WorkerPool> {
    WorkerPool::start(config(dir, limit, threshold, period))
}

fn config(
    dir: &tempfile::TempDir,
    limit: Option<u64>,
    threshold: f64,
    period: Duration,
) -> WorkerPoolConfig {
    let mut config = WorkerPoolConfig::new(NodeId::random(), "127.0.0.1:7", dir.path());
    config.worker_memory_limit = limit;
    config.node_memory_threshold = threshold;
    config.monitor_period = period;
    config
}

async fn next_exit(exits: &mut tokio::sync::broadcast::Receiver<WorkerExit>) -> WorkerExit {
    tokio::time::timeout(Duration::from_secs(20), exits.recv())
        .await
        .expect("a worker exit")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_worker_mode_environment_and_their_own_logs() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, None, 1.0);
    let mut exits = pool.subscribe();
    let spec = shell(
        "echo $PHOTON_WORKER $PHOTON_WORKER_ID $PHOTON_RAYLET_ADDRESS $CUDA_VISIBLE_DEVICES; exit 3",
        &[("CUDA_VISIBLE_DEVICES", "1")],
    );
    let worker = pool.lease(&spec).unwrap();
    let exit = next_exit(&mut exits).await;
    assert_eq!(
        (exit.worker_id, exit.reason.clone()),
        (worker.id, ExitReason::Exited(3))
    );
    assert_eq!(exit.reason.to_string(), "exited with code 3");
    let out =
        std::fs::read_to_string(dir.path().join(format!("worker-{}.out", worker.id))).unwrap();
    assert_eq!(out.trim(), format!("1 {} 127.0.0.1:7 1", worker.id));
    assert_eq!(pool.exit_reason(worker.id), Some(ExitReason::Exited(3)));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestarted_workers_are_reused_only_for_the_same_spec() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, None, 1.0);
    let gpu0 = shell("sleep 30", &[("CUDA_VISIBLE_DEVICES", "0")]);
    let gpu1 = shell("sleep 30", &[("CUDA_VISIBLE_DEVICES", "1")]);
    pool.prestart(&gpu0, 2).unwrap();
    assert_eq!(pool.idle_count(&gpu0), 2);
    let first = pool.lease(&gpu0).unwrap();
    assert_eq!(pool.idle_count(&gpu0), 1, "leased a prestarted worker");
    let other = pool.lease(&gpu1).unwrap();
    assert_ne!(other.pid, first.pid);
    assert_eq!(pool.live().len(), 3, "a new process for another GPU");
    pool.release(&first);
    assert_eq!(
        pool.lease(&gpu0).unwrap().id,
        first.id,
        "the released worker is reused"
    );
    assert_eq!(pool.live().len(), 3, "no new process");
    pool.shutdown().await;
    assert!(pool.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_reaped_with_its_signal_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, None, 1.0);
    let mut exits = pool.subscribe();
    let spec = shell("sleep 30", &[]);
    let worker = pool.lease(&spec).unwrap();
    pool.release(&worker);
    std::process::Command::new("kill")
        .args(["-9", &worker.pid.to_string()])
        .status()
        .unwrap();
    let exit = next_exit(&mut exits).await;
    assert_eq!(exit.reason, ExitReason::Signaled(9));
    assert_eq!(exit.reason.to_string(), "killed by signal 9 (SIGKILL)");
    assert_ne!(
        pool.lease(&spec).unwrap().id,
        worker.id,
        "a dead idle worker is not handed out"
    );
    pool.shutdown().await;
}

fn python_hog(mib: u32) -> WorkerSpec {
    WorkerSpec {
        program: "python3".into(),
        args: vec![
            "-c".into(),
            format!(
                "import time\nx = bytearray({mib} << 20)\nprint('allocated', flush=True)\ntime.sleep(60)"
            ),
        ],
        env: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_is_killed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, Some(100 << 20), 1.0);
    let mut exits = pool.subscribe();
    let small = pool.lease(&shell("sleep 30", &[])).unwrap();
    let hog = pool.lease(&python_hog(300)).unwrap();
    let exit = next_exit(&mut exits).await;
    assert_eq!(exit.worker_id, hog.id, "only the hog is killed");
    let ExitReason::KilledForMemory { rss, ref why } = exit.reason else {
        panic!("{:?}", exit.reason)
    };
    assert!(rss > 100 << 20, "rss {rss}");
    assert!(
        why.contains("over the worker memory limit of 100 MiB"),
        "{why}"
    );
    assert!(
        exit.reason
            .to_string()
            .starts_with("killed for memory: private resident"),
        "{}",
        exit.reason
    );
    assert!(pool.live().iter().any(|w| w.id == small.id));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_node_is_short_the_largest_worker_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    // Threshold 0: the node always counts as short, so the monitor kills the
    // largest worker. Its first look is after 3 s: by then the hog has
    // allocated (a process sampled between fork and exec could otherwise look
    // larger than it is).
    let pool = pool_checking_every(&dir, None, 0.0, Duration::from_secs(3));
    let mut exits = pool.subscribe();
    let hog = pool.lease(&python_hog(200)).unwrap();
    let small = pool.lease(&shell("exec sleep 30", &[])).unwrap();
    wait_for_allocation(&dir, hog.id).await;
    let exit = next_exit(&mut exits).await;
    assert_ne!(exit.worker_id, small.id);
    let ExitReason::KilledForMemory { ref why, .. } = exit.reason else {
        panic!("{:?}", exit.reason)
    };
    assert!(
        why.contains("threshold 0%") && why.contains("largest worker"),
        "{why}"
    );
    assert_eq!(exit.worker_id, hog.id);
    pool.shutdown().await;
}

/// A worker that maps `mib` MiB of a shared-memory file and touches every
/// page, as a zero-copy reader of the object store does: resident, but not
/// its own.
fn python_shm_reader(mib: u32) -> WorkerSpec {
    WorkerSpec {
        program: "python3".into(),
        args: vec![
            "-c".into(),
            format!(
                "import mmap, os, time\n\
                 path = '/dev/shm/photon-test-%d' % os.getpid()\n\
                 fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)\n\
                 os.ftruncate(fd, {mib} << 20)\n\
                 os.unlink(path)\n\
                 m = mmap.mmap(fd, {mib} << 20)\n\
                 for i in range(0, {mib} << 20, 4096): m[i] = 1\n\
                 print('allocated', flush=True)\n\
                 time.sleep(60)"
            ),
        ],
        env: BTreeMap::new(),
    }
}

async fn wait_for_allocation(dir: &tempfile::TempDir, worker: photon_proto::WorkerId) {
    let log = dir.path().join(format!("worker-{worker}.out"));
    for _ in 0..500 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("allocated")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("worker {worker} did not allocate in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cgroup_kills_the_worker_with_the_most_private_memory() {
    let dir = tempfile::tempdir().unwrap();
    // A cgroup v2 tree where this process's cgroup is capped and 97% used
    // (the host itself has room: only the cgroup can trigger the monitor).
    let cgroup_root = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/");
    let cgroup = cgroup_root.path().join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("memory.max"), format!("{}", 1000u64 << 20)).unwrap();
    std::fs::write(cgroup.join("memory.current"), format!("{}", 970u64 << 20)).unwrap();
    std::fs::write(cgroup.join("memory.stat"), "inactive_file 0\n").unwrap();
    let mut config = config(&dir, None, 0.95, Duration::from_secs(3));
    config.cgroup_root = cgroup_root.path().to_path_buf();
    let pool = WorkerPool::start(config);
    let mut exits = pool.subscribe();
    // The reader's VmRSS (300 MiB of shared pages) is the largest; the hog's
    // 150 MiB are its own.
    let reader = pool.lease(&python_shm_reader(300)).unwrap();
    let hog = pool.lease(&python_hog(150)).unwrap();
    wait_for_allocation(&dir, reader.id).await;
    wait_for_allocation(&dir, hog.id).await;
    assert!(
        photon_raylet::procfs::resident_bytes(reader.pid).unwrap()
            > photon_raylet::procfs::resident_bytes(hog.pid).unwrap(),
        "the reader maps more"
    );
    let exit = next_exit(&mut exits).await;
    assert_eq!(
        exit.worker_id, hog.id,
        "the hog's memory is what a kill frees"
    );
    let ExitReason::KilledForMemory { rss, ref why } = exit.reason else {
        panic!("{:?}", exit.reason)
    };
    assert!((150 << 20..250 << 20).contains(&rss), "private {rss}");
    assert!(
        why.contains("cgroup")
            && why.contains("97% used")
            && why.contains("largest worker by private memory"),
        "{why}"
    );
    assert!(pool.live().iter().any(|w| w.id == reader.id));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_are_stopped_after_the_idle_timeout_and_busy_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, None, 1.0, Duration::from_millis(50));
    config.idle_timeout = Duration::from_millis(600);
    let pool = WorkerPool::start(config);
    let mut exits = pool.subscribe();
    let spec = shell("sleep 30", &[]);
    let idle = pool.lease(&spec).unwrap();
    let busy = pool.lease(&spec).unwrap();
    pool.release(&idle);
    let started = std::time::Instant::now();
    let exit = next_exit(&mut exits).await;
    let waited = started.elapsed();
    assert_eq!(
        (exit.worker_id, exit.reason.clone()),
        (idle.id, ExitReason::Idle(Duration::from_millis(600)))
    );
    assert_eq!(exit.reason.to_string(), "stopped after 600ms idle");
    assert!(
        waited >= Duration::from_millis(600),
        "stopped after only {waited:?}"
    );
    assert_eq!(pool.idle_count(&spec), 0);
    // The leased worker stays however long it is busy; reused in time, a
    // released worker stays too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let live: Vec<_> = pool.live().into_iter().map(|w| w.id).collect();
    assert_eq!(live, vec![busy.id]);
    pool.release(&busy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.lease(&spec).unwrap().id, busy.id);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.live().len(), 1);
    assert_eq!(pool.exit_counts()["idle"], 1);
    pool.shutdown().await;
}
