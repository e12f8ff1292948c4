//! Autoscaling against a mocked API server and a real head on loopback, to
//! which the test reports a node (as a raylet would) with waiting lease
//! requests, then idle.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use photon_operator::reconcile::{Context, reconcile};
use photon_operator::types::{PhotonCluster, PhotonClusterSpec, PhotonClusterStatus};
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::{
    GetClusterStatusRequest, Heartbeat, NodeInfo, RegisterNodeRequest, ResourceDemand,
};
use photon_proto::{NodeId, PROTOCOL_VERSION};
use serde_json::{Value, json};
use support::{Call, TOKEN, expect, head, serve};

type Client = HeadClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AttachToken>,
>;

/// A node at 10.1.0.5 (as the head knows it) whose heartbeats the test sends.
struct FakeNode {
    id: NodeId,
    heartbeats: tokio::sync::mpsc::Sender<Heartbeat>,
    head: Client,
}

const ONE_CPU: i64 = 10_000;

impl FakeNode {
    async fn register(address: &str) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let mut head = HeadClient::with_interceptor(channel, AttachToken::new(TOKEN).unwrap());
        let id = NodeId::random();
        head.register_node(RegisterNodeRequest {
            protocol_version: PROTOCOL_VERSION,
            node: Some(NodeInfo {
                node_id: id.to_vec(),
                address: "10.1.0.5:7000".into(),
                total: HashMap::from([("CPU".into(), ONE_CPU)]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let (heartbeats, receiver) = tokio::sync::mpsc::channel(4);
        let mut stream_client = head.clone();
        tokio::spawn(async move {
            let replies = stream_client
                .heartbeats(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await;
            if let Ok(replies) = replies {
                let mut replies = replies.into_inner();
                while let Ok(Some(_)) = replies.message().await {}
            }
        });
        Self {
            id,
            heartbeats,
            head,
        }
    }

    /// Sends a heartbeat and waits until the head shows `waiting` requests.
    async fn beat(&mut self, cpu_free: i64, waiting: u32) {
        let pending = (waiting > 0)
            .then(|| ResourceDemand {
                resources: HashMap::from([("CPU".into(), ONE_CPU)]),
                count: waiting,
                oldest_wait_ms: 1000,
                reason: "waiting for CPU".into(),
            })
            .into_iter()
            .collect();
        let heartbeat = Heartbeat {
            node_id: self.id.to_vec(),
            available: HashMap::from([("CPU".into(), cpu_free)]),
            pending,
            ..Default::default()
        };
        self.heartbeats.send(heartbeat).await.unwrap();
        for _ in 0..100 {
            let status = self
                .head
                .get_cluster_status(GetClusterStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let node = &status.nodes[0];
            let shown: u32 = node.pending.iter().map(|d| d.count).sum();
            if shown == waiting && node.available.get("CPU") == Some(&cpu_free) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the head did not take the heartbeat");
    }
}

/// The cluster as last reconciled: its status records the head (here the
/// test's, on loopback) and, after a pass, the group's wanted count.
fn cluster(head: &str, previous_desired: Option<i32>) -> PhotonCluster {
    let spec: PhotonClusterSpec = serde_json::from_value(json!({
        "image": "photon:1",
        "workerGroups": [{"name": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 3,
                          "resources": {"limits": {"cpu": "1"}}}],
        "autoscaling": {"enabled": true, "idleSeconds": 0}
    }))
    .unwrap();
    let mut cluster = PhotonCluster::new("demo", spec);
    cluster.metadata.namespace = Some("ml".into());
    cluster.metadata.uid = Some("uid-1".into());
    let groups: Vec<Value> = previous_desired
        .map(|desired| json!({"name": "cpu", "readyReplicas": desired, "desiredReplicas": desired}))
        .into_iter()
        .collect();
    cluster.status = Some(
        serde_json::from_value::<PhotonClusterStatus>(json!({
            "headAddress": head, "workerGroups": groups
        }))
        .unwrap(),
    );
    cluster
}

fn worker(index: u32, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("demo-cpu-{index}"), "namespace": "ml",
                        "labels": {"photon.dev/cluster": "demo", "photon.dev/role": "worker", "photon.dev/group": "cpu"},
                        "annotations": {"photon.dev/index": index.to_string()}},
           "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-token"},
           "data": {"token": "am9iLXRlc3QtdG9rZW4="}})
}

/// One pass: the head objects applied (head ready), the workers listed,
/// the token read for the head; then `changes`; then the status.
async fn pass(
    cluster: PhotonCluster,
    pods: Vec<Value>,
    changes: Vec<support::Expect>,
) -> Vec<Call> {
    let mut script = vec![
        expect(Method::GET, "/secrets/demo-token", 200, secret()),
        expect(
            Method::PATCH,
            "/deployments/demo-head?",
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo-head"}, "status": {"readyReplicas": 1}}),
        ),
        expect(
            Method::PATCH,
            "/services/demo-head?",
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo-head"}}),
        ),
        expect(
            Method::GET,
            "/pods?",
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
        ),
        expect(Method::GET, "/secrets/demo-token", 200, secret()),
    ];
    script.extend(changes);
    script.push(expect(Method::PATCH, "/photonclusters/demo/status", 200, json!({"apiVersion": "photon.dev/v1alpha1", "kind": "PhotonCluster", "metadata": {"name": "demo"}, "spec": {"image": "photon:1"}})));
    let (outcome, calls) = serve(script, |client| async move {
        reconcile(Arc::new(cluster), Arc::new(Context::new(client)))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_add_a_worker_and_an_idle_one_is_removed() {
    let head = head().await;
    let mut node = FakeNode::register(&head.address).await;
    // The one worker is busy and two requests wait: one more worker.
    node.beat(0, 2).await;
    let calls = pass(
        cluster(&head.address, None),
        vec![worker(0, "10.1.0.5")],
        vec![expect(Method::POST, "/pods", 201, worker(1, "10.1.0.6"))],
    )
    .await;
    assert_eq!(calls[5].body["metadata"]["name"], "demo-cpu-1");
    assert_eq!(
        calls[6].body["status"]["workerGroups"][0]["desiredReplicas"],
        2
    );

    // Nothing waits and the first worker's node is idle: it goes (not the
    // top index), down to 1.
    node.beat(ONE_CPU, 0).await;
    let calls = pass(
        cluster(&head.address, Some(2)),
        vec![worker(0, "10.1.0.5"), worker(1, "10.1.0.6")],
        vec![expect(
            Method::DELETE,
            "/pods/demo-cpu-0",
            200,
            worker(0, "10.1.0.5"),
        )],
    )
    .await;
    assert_eq!(
        calls[6].body["status"]["workerGroups"][0]["desiredReplicas"],
        1
    );
}
