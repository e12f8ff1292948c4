//! The actor host: resources held per actor, GPU devices, idempotent starts.

use std::time::Duration;

use photon_proto::v1::ActorSpec;
use photon_proto::{ActorId, JobId, NodeId, Quantity, ResourceSet, TaskId};
use photon_raylet::actors::ActorHost;
use photon_raylet::worker_pool::{WorkerPool, WorkerPoolConfig};

fn spec(n: u64, gpus: f64) -> ActorSpec {
    ActorSpec {
        actor_id: ActorId::for_child(TaskId::for_driver(JobId::from_u32(1)), n).to_vec(),
        resources: ResourceSet::new()
            .with("GPU", Quantity::from_f64("GPU", gpus).unwrap())
            .to_proto(),
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "exec sleep 30".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_hold_gpus_and_a_retried_start_gets_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pool = WorkerPool::start(WorkerPoolConfig::new(
        NodeId::random(),
        "127.0.0.1:7",
        dir.path(),
    ));
    let total = ResourceSet::new()
        .with("CPU", Quantity::whole(2))
        .with("GPU", Quantity::whole(2));
    let host = ActorHost::new(&total, vec!["4".into(), "5".into()], pool.clone());

    let first = host.start(&spec(1, 0.5)).unwrap();
    assert_eq!(first.cuda_visible_devices, "4");
    let again = host.start(&spec(1, 0.5)).unwrap();
    assert_eq!(
        (again.pid, again.worker_id.clone()),
        (first.pid, first.worker_id.clone()),
        "no second worker"
    );
    assert_eq!(
        host.available().get("GPU"),
        Quantity::from_f64("GPU", 1.5).unwrap()
    );

    let whole = host.start(&spec(2, 1.0)).unwrap();
    assert_eq!(whole.cuda_visible_devices, "5");
    let refused = host.start(&spec(3, 0.75)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("no GPU instance has 0.75 free"),
        "{}",
        refused.message()
    );

    // Stopping kills the worker; the pool reports why.
    let mut exits = pool.subscribe();
    host.stop(ActorId::from_slice(&spec(2, 1.0).actor_id).unwrap())
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), exits.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.pid, whole.pid);
    assert_eq!(exit.reason.to_string(), "killed by signal 9 (SIGKILL)");
    pool.shutdown().await;
}
