//! Reconciling `PhotonJob`s: the Kubernetes API is mocked (tower-test), the
//! head the job is submitted to is a real one on loopback, so submission,
//! outcome, retries and the cluster's deletion after the TTL are all real.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use photon_operator::job::reconcile_job;
use photon_operator::reconcile::Context;
use photon_operator::types::{PhotonJob, PhotonJobSpec, PhotonJobStatus};
use photon_proto::auth::AttachToken;
use photon_proto::v1::jobs_client::JobsClient;
use photon_proto::v1::{JobRequest, StopJobRequest};
use serde_json::{Value, json};
use support::{Call, Expect, TOKEN, expect, head, serve_with_events};

fn job(entrypoint: &[&str], backoff_limit: i32, status: Option<PhotonJobStatus>) -> PhotonJob {
    let spec: PhotonJobSpec = serde_json::from_value(json!({
        "entrypoint": entrypoint,
        "env": {"GREETING": "hello"},
        "clusterSpec": {"image": "photon:1", "workerGroups": [{"name": "cpu", "replicas": 1}]},
        "ttlSecondsAfterFinished": 0,
        "backoffLimit": backoff_limit
    }))
    .unwrap();
    let mut job = PhotonJob::new("embed", spec);
    job.metadata.namespace = Some("ml".into());
    job.metadata.uid = Some("job-uid".into());
    job.status = status;
    job
}

/// The job's cluster as the API server answers an apply: ready, at `head`.
fn ready_cluster(head: &str) -> Value {
    json!({"apiVersion": "photon.dev/v1alpha1", "kind": "PhotonCluster",
           "metadata": {"name": "embed-cluster", "namespace": "ml"},
           "spec": {"image": "photon:1"},
           "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "ClusterReady", "message": ""}],
                      "headAddress": head}})
}

fn token_secret() -> Value {
    // `data` is base64, as the API server returns it.
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "embed-cluster-token"},
           "data": {"token": "am9iLXRlc3QtdG9rZW4="}})
}

fn job_echo() -> Value {
    json!({"apiVersion": "photon.dev/v1alpha1", "kind": "PhotonJob",
           "metadata": {"name": "embed", "namespace": "ml"}, "spec": {"entrypoint": ["sh"]}})
}

/// One reconcile pass of a job whose cluster is ready: apply the cluster,
/// read its token, talk to the head, write the status.
fn ready_pass(head: &str) -> Vec<Expect> {
    vec![
        expect(
            Method::PATCH,
            "/namespaces/ml/photonclusters/embed-cluster?",
            200,
            ready_cluster(head),
        ),
        expect(
            Method::GET,
            "/api/v1/namespaces/ml/secrets/embed-cluster-token",
            200,
            token_secret(),
        ),
        expect(
            Method::PATCH,
            "/namespaces/ml/photonjobs/embed/status",
            200,
            job_echo(),
        ),
    ]
}

/// The pass that sees the job ended: `ready_pass`, then the cluster deleted
/// (the tests' TTL is 0).
fn final_pass(head: &str) -> Vec<Expect> {
    let mut script = ready_pass(head);
    script.push(expect(
        Method::DELETE,
        "/namespaces/ml/photonclusters/embed-cluster",
        200,
        ready_cluster(head),
    ));
    script
}

/// One reconcile of `job` against `script`: its outcome, the calls and
/// the events published.
async fn reconcile(
    job: PhotonJob,
    script: Vec<Expect>,
) -> (Result<Action, String>, Vec<Call>, Vec<Call>) {
    serve_with_events(script, |client| async move {
        reconcile_job(Arc::new(job), Arc::new(Context::new(client)))
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

fn status_of(call: &Call) -> PhotonJobStatus {
    serde_json::from_value(call.body["status"].clone()).unwrap()
}

/// Waits until the head has ended job `id`.
async fn wait_ended(head: &str, id: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{head}"))
        .unwrap()
        .connect_lazy();
    let mut jobs = JobsClient::with_interceptor(channel, AttachToken::new(TOKEN).unwrap());
    for _ in 0..200 {
        let record = jobs
            .get_job(JobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if record.ended_at_unix_ms != 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_submitted_followed_and_its_cluster_deleted_after_the_ttl() {
    let head = head().await;
    let entrypoint = ["sh", "-c", "echo $GREETING from the job"];
    // Pass 1: the cluster is applied (owned by the job), the job submitted.
    let (outcome, calls, events) =
        reconcile(job(&entrypoint, 0, None), ready_pass(&head.address)).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let applied = &calls[0].body;
    assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], "job-uid");
    assert_eq!(applied["spec"]["workerGroups"][0]["name"], "cpu");
    let status = status_of(&calls[2]);
    assert_eq!(status.state.as_deref(), Some("Running"), "{status:?}");
    assert_eq!(status.attempts, 1);
    assert_eq!(status.cluster_name.as_deref(), Some("embed-cluster"));
    let id = status.job_id.clone().expect("a job id");
    assert_eq!(
        reasons(&events),
        [(
            "Normal",
            "Running",
            format!("job {id} is Running (attempt 1)")
        )]
    );
    wait_ended(&head.address, &id).await;

    // Pass 2: the head says it succeeded; with a TTL of 0 the cluster goes at once.
    let (outcome, calls, events) =
        reconcile(job(&entrypoint, 0, Some(status)), final_pass(&head.address)).await;
    assert!(
        matches!(&outcome, Ok(action) if *action == Action::await_change()),
        "{outcome:?}"
    );
    let status = status_of(&calls[2]);
    assert_eq!(status.state.as_deref(), Some("Succeeded"), "{status:?}");
    assert!(status.end_time.is_some());
    assert_eq!(
        reasons(&events),
        [
            (
                "Normal",
                "Succeeded",
                format!("job {id} is Succeeded (attempt 1)")
            ),
            (
                "Normal",
                "DeletedCluster",
                "deleted cluster embed-cluster (the job ended)".into()
            ),
        ]
    );

    // Pass 3: a finished job whose cluster is gone does nothing more.
    let (outcome, calls, events) = reconcile(
        job(&entrypoint, 0, Some(status)),
        vec![expect(Method::DELETE, "/photonclusters/embed-cluster", 404, json!({"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound", "status": "Failure", "message": "gone"}))],
    )
    .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(calls.len(), 1);
    assert!(events.is_empty(), "nothing happened: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_resubmitted_within_its_backoff_limit_then_fails() {
    let head = head().await;
    let entrypoint = ["sh", "-c", "echo failing >&2; exit 3"];
    let (_, calls, events) = reconcile(job(&entrypoint, 1, None), ready_pass(&head.address)).await;
    let first = status_of(&calls[2]);
    assert_eq!(events.len(), 1, "{events:?}");
    wait_ended(&head.address, first.job_id.as_deref().unwrap()).await;

    // The first attempt failed: one retry is allowed, so it is submitted again.
    let (_, calls, events) = reconcile(
        job(&entrypoint, 1, Some(first.clone())),
        ready_pass(&head.address),
    )
    .await;
    let retrying = status_of(&calls[2]);
    assert_eq!(retrying.job_id, None, "{retrying:?}");
    let message = retrying.message.clone().unwrap();
    assert!(
        message.contains("attempt 1 failed (the driver exited with code 3)"),
        "{message}"
    );
    assert_eq!(reasons(&events), [("Warning", "Retrying", message)]);
    let (_, calls, events) = reconcile(
        job(&entrypoint, 1, Some(retrying)),
        ready_pass(&head.address),
    )
    .await;
    let second = status_of(&calls[2]);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.job_id, first.job_id);
    let note = format!(
        "submitted to the head as job {} (attempt 2)",
        second.job_id.as_deref().unwrap()
    );
    assert_eq!(reasons(&events), [("Normal", "Submitted", note)]);
    wait_ended(&head.address, second.job_id.as_deref().unwrap()).await;

    // The retry failed too: the job is Failed with the head's reason.
    let (_, calls, events) =
        reconcile(job(&entrypoint, 1, Some(second)), final_pass(&head.address)).await;
    let failed = status_of(&calls[2]);
    assert_eq!(failed.state.as_deref(), Some("Failed"));
    assert_eq!(
        failed.message.as_deref(),
        Some("the driver exited with code 3")
    );
    assert_eq!(
        reasons(&events),
        [
            ("Warning", "Failed", "the driver exited with code 3".into()),
            (
                "Normal",
                "DeletedCluster",
                "deleted cluster embed-cluster (the job ended)".into()
            ),
        ]
    );
}

/// Each event's type, reason and note.
fn reasons(events: &[Call]) -> Vec<(&str, &str, String)> {
    events
        .iter()
        .map(|e| {
            let field = |name: &str| e.body[name].as_str().unwrap_or_default();
            (field("type"), field("reason"), field("note").to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_on_request_ends_stopped_and_is_not_retried() {
    let head = head().await;
    let entrypoint = ["sleep", "600"];
    let (_, calls, _) = reconcile(job(&entrypoint, 2, None), ready_pass(&head.address)).await;
    let running = status_of(&calls[2]);
    let id = running.job_id.clone().unwrap();

    // Someone stops it on the head (`photon job stop`).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", head.address))
        .unwrap()
        .connect_lazy();
    let mut jobs = JobsClient::with_interceptor(channel, AttachToken::new(TOKEN).unwrap());
    jobs.stop_job(StopJobRequest {
        job_id: id.clone(),
        grace_period_ms: 0,
    })
    .await
    .unwrap();
    wait_ended(&head.address, &id).await;

    // With retries left, it still ends Stopped: nothing is submitted again.
    let (_, calls, events) = reconcile(
        job(&entrypoint, 2, Some(running)),
        final_pass(&head.address),
    )
    .await;
    let stopped = status_of(&calls[2]);
    assert_eq!(stopped.state.as_deref(), Some("Stopped"), "{stopped:?}");
    assert_eq!(stopped.job_id.as_deref(), Some(id.as_str()));
    assert_eq!(stopped.attempts, 1);
    assert_eq!(reasons(&events)[0].1, "Stopped");
}
