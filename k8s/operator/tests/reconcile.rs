//! Reconciling `PhotonCluster`s against a mocked API server (kube's
//! tower-test style): every request the operator makes is checked against
//! a script of expected calls, answered, and recorded.

mod support;

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use photon_operator::reconcile::{Context, reconcile};
use photon_operator::types::{PhotonCluster, PhotonClusterSpec};
use serde_json::{Value, json};
use support::{Call, Expect, expect, serve_with_events};

/// Runs one reconcile of `cluster` against `script`; returns its outcome,
/// the calls and the events published.
async fn run(
    cluster: PhotonCluster,
    script: Vec<Expect>,
) -> (Result<Action, String>, Vec<Call>, Vec<Call>) {
    serve_with_events(script, |client| async move {
        reconcile(Arc::new(cluster), Arc::new(Context::new(client)))
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

fn cluster(spec: Value) -> PhotonCluster {
    let spec: PhotonClusterSpec = serde_json::from_value(spec).unwrap();
    let mut cluster = PhotonCluster::new("demo", spec);
    cluster.metadata.namespace = Some("ml".into());
    cluster.metadata.uid = Some("uid-1".into());
    cluster.metadata.generation = Some(1);
    cluster
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// What the API server answers to a server-side apply: the object itself.
fn echo_deployment(ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo-head", "namespace": "ml"},
           "status": {"readyReplicas": ready}})
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo-head", "namespace": "ml"}})
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

fn worker(index: u32, phase: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("demo-cpu-{index}"), "namespace": "ml",
                        "labels": {"photon.dev/cluster": "demo", "photon.dev/role": "worker", "photon.dev/group": "cpu"},
                        "annotations": {"photon.dev/index": index.to_string()}},
           "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

fn created(body: &Value) -> Value {
    body.clone()
}

fn cluster_echo() -> Value {
    json!({"apiVersion": "photon.dev/v1alpha1", "kind": "PhotonCluster",
           "metadata": {"name": "demo", "namespace": "ml"}, "spec": {"image": "photon:1"}})
}

fn cpu_cluster(replicas: i32) -> PhotonCluster {
    cluster(json!({
        "image": "photon:1",
        "workerGroups": [{"name": "cpu", "replicas": replicas, "minReplicas": 1, "maxReplicas": 4,
                          "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}}]
    }))
}

#[tokio::test]
async fn a_fresh_cluster_gets_its_token_head_service_and_workers() {
    let (outcome, calls, events) = run(
        cpu_cluster(2),
        vec![
            expect(
                Method::GET,
                "/api/v1/namespaces/ml/secrets/demo-token",
                404,
                not_found(),
            ),
            expect(
                Method::POST,
                "/api/v1/namespaces/ml/secrets",
                201,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-token"}}),
            ),
            expect(
                Method::PATCH,
                "/apis/apps/v1/namespaces/ml/deployments/demo-head?",
                200,
                echo_deployment(0),
            ),
            expect(
                Method::PATCH,
                "/api/v1/namespaces/ml/services/demo-head?",
                200,
                service(),
            ),
            expect(
                Method::GET,
                "/api/v1/namespaces/ml/pods?",
                200,
                pod_list(vec![]),
            ),
            expect(
                Method::POST,
                "/api/v1/namespaces/ml/pods",
                201,
                created(&worker(0, "Pending", false)),
            ),
            expect(
                Method::POST,
                "/api/v1/namespaces/ml/pods",
                201,
                created(&worker(1, "Pending", false)),
            ),
            expect(
                Method::PATCH,
                "/apis/photon.dev/v1alpha1/namespaces/ml/photonclusters/demo/status",
                200,
                cluster_echo(),
            ),
        ],
    )
    .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    // The token: 64 hex characters, under the key `token`.
    let token = calls[1].body["stringData"]["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // Server-side apply with the operator's field manager, owned by the cluster.
    assert!(
        calls[2].path.contains("fieldManager=photon-operator"),
        "{}",
        calls[2].path
    );
    let owner = &calls[2].body["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("PhotonCluster"), Some("uid-1"))
    );
    let head_args = calls[2].body["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        head_args.contains("\"--head\"") && head_args.contains("\"8265\""),
        "{head_args}"
    );
    assert!(
        calls[4]
            .path
            .contains("labelSelector=photon.dev%2Fcluster%3Ddemo"),
        "{}",
        calls[4].path
    );
    let names: Vec<&str> = calls[5..7]
        .iter()
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo-cpu-0", "demo-cpu-1"]);
    let events: Vec<_> = reasons(&events).into_iter().map(|(_, r, _)| r).collect();
    assert_eq!(events, ["CreatedWorker", "CreatedWorker"]);
    let args = calls[5].body["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("demo-head.ml.svc:6380") && args.contains("\"--num-cpus\",\"2\""),
        "{args}"
    );
    let status = &calls[7].body["status"];
    assert_eq!(status["headAddress"], "demo-head.ml.svc:6380");
    assert_eq!(
        status["workerGroups"][0],
        json!({"name": "cpu", "readyReplicas": 0, "desiredReplicas": 2})
    );
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
}

/// A pass over a cluster whose Secret exists: the head applied (`ready`
/// replicas), `pods` listed, then `changes`, then the status written.
fn existing_cluster(ready: i32, pods: Vec<Value>, changes: Vec<Expect>) -> Vec<Expect> {
    let mut script = vec![
        expect(
            Method::GET,
            "/secrets/demo-token",
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-token"}}),
        ),
        expect(
            Method::PATCH,
            "/deployments/demo-head?",
            200,
            echo_deployment(ready),
        ),
        expect(Method::PATCH, "/services/demo-head?", 200, service()),
        expect(Method::GET, "/pods?", 200, pod_list(pods)),
    ];
    script.extend(changes);
    script.push(expect(
        Method::PATCH,
        "/photonclusters/demo/status",
        200,
        cluster_echo(),
    ));
    script
}

#[tokio::test]
async fn scaling_from_2_to_4_creates_the_two_missing_workers() {
    let (outcome, calls, events) = run(
        cpu_cluster(4),
        existing_cluster(
            1,
            vec![worker(0, "Running", true), worker(1, "Running", true)],
            vec![
                expect(
                    Method::POST,
                    "/pods",
                    201,
                    created(&worker(2, "Pending", false)),
                ),
                expect(
                    Method::POST,
                    "/pods",
                    201,
                    created(&worker(3, "Pending", false)),
                ),
            ],
        ),
    )
    .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let created: Vec<&str> = calls[4..6]
        .iter()
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(created, ["demo-cpu-2", "demo-cpu-3"]);
    assert_eq!(
        reasons(&events),
        [
            (
                "Normal",
                "CreatedWorker",
                "created worker pod demo-cpu-2 (group cpu, index 2)"
            ),
            (
                "Normal",
                "CreatedWorker",
                "created worker pod demo-cpu-3 (group cpu, index 3)"
            ),
        ]
    );
    // Each names its pod as the related object (so the recorder keeps them apart).
    assert_eq!(events[1].body["related"]["name"], "demo-cpu-3");
    assert_eq!(events[1].body["related"]["kind"], "Pod");
    assert_eq!(
        calls[6].body["status"]["workerGroups"][0],
        json!({"name": "cpu", "readyReplicas": 2, "desiredReplicas": 4})
    );
}

#[tokio::test]
async fn a_failed_worker_is_replaced_and_the_head_reapplied() {
    let (outcome, calls, events) = run(
        cpu_cluster(2),
        // The head's Deployment is applied on every pass: a deleted or
        // failed head comes back (Kubernetes replaces its pod).
        existing_cluster(
            0,
            vec![worker(0, "Failed", false), worker(1, "Running", true)],
            vec![
                expect(
                    Method::POST,
                    "/pods",
                    201,
                    created(&worker(2, "Pending", false)),
                ),
                expect(
                    Method::DELETE,
                    "/pods/demo-cpu-0",
                    200,
                    worker(0, "Failed", false),
                ),
            ],
        ),
    )
    .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        calls[4].body["metadata"]["name"], "demo-cpu-2",
        "replaced at once"
    );
    assert_eq!(
        reasons(&events),
        [
            (
                "Normal",
                "CreatedWorker",
                "created worker pod demo-cpu-2 (group cpu, index 2)"
            ),
            (
                "Normal",
                "ReplacingFailedWorker",
                "deleted worker pod demo-cpu-0 (group cpu): it ended; 2 wanted"
            ),
        ]
    );
    let conditions = calls[6].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .clone();
    let head = conditions
        .iter()
        .find(|c| c["type"] == "HeadReady")
        .unwrap();
    assert_eq!(
        (head["status"].as_str(), head["reason"].as_str()),
        (Some("False"), Some("HeadStarting"))
    );
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_with_the_reason_and_nothing_is_created() {
    let invalid = cluster(json!({
        "image": "photon:1",
        "workerGroups": [{"name": "gpu", "replicas": 2, "minReplicas": 3, "maxReplicas": 1,
                          "resources": {"limits": {"nvidia.com/gpu": "0.5"}}}]
    }));
    let (outcome, calls, events) = run(
        invalid,
        vec![expect(
            Method::PATCH,
            "/photonclusters/demo/status",
            200,
            cluster_echo(),
        )],
    )
    .await;
    assert!(matches!(outcome, Ok(action) if action == Action::await_change()));
    assert_eq!(calls.len(), 1, "only the status is written: {calls:?}");
    let valid = &calls[0].body["status"]["conditions"][0];
    assert_eq!(valid["type"], "Valid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "InvalidSpec");
    let message = valid["message"].as_str().unwrap();
    assert!(
        message.contains("maxReplicas 1 is less than minReplicas 3"),
        "{message}"
    );
    assert!(
        message.contains("\"0.5\" is not a whole number"),
        "{message}"
    );
    // The reason is an event on the cluster too (`kubectl describe`).
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert!(
        event.path.contains("/namespaces/ml/events"),
        "{}",
        event.path
    );
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "InvalidSpec");
    assert_eq!(event.body["note"], message);
    assert_eq!(event.body["regarding"]["kind"], "PhotonCluster");
    assert_eq!(event.body["regarding"]["name"], "demo");
    assert_eq!(event.body["reportingController"], "photon-operator");
}

/// Each event's type, reason and note.
fn reasons(events: &[Call]) -> Vec<(&str, &str, &str)> {
    events
        .iter()
        .map(|e| {
            let field = |name: &str| e.body[name].as_str().unwrap_or_default();
            (field("type"), field("reason"), field("note"))
        })
        .collect()
}
