//! The head's gRPC service, in-process: version checks, token, KV.

use photon_head::HeadConfig;
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::{KvGetRequest, KvPutRequest, NodeInfo, RegisterNodeRequest};
use photon_proto::{NodeId, PROTOCOL_VERSION};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = HeadClient<InterceptedService<Channel, AttachToken>>;

async fn start_head(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = HeadConfig::new(dir, "secret");
    tokio::spawn(photon_head::run(config, listener, async {
        let _ = stopped.await;
    }));
    (address, stop)
}

/// Starts a head again on `dir` once the stopped one has released its database.
async fn restart_head(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    for _ in 0..100 {
        if photon_head::Persistence::open(dir).is_ok() {
            return start_head(dir).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the head's database is never released");
}

async fn client(address: &str, token: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HeadClient::with_interceptor(channel, AttachToken::new(token).unwrap())
}

fn node() -> NodeInfo {
    NodeInfo {
        node_id: NodeId::random().to_vec(),
        address: "127.0.0.1:9".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn protocol_mismatch_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _stop) = start_head(dir.path()).await;
    let mut head = client(&address, "secret").await;
    let status = head
        .register_node(RegisterNodeRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            node: Some(node()),
            objects: Vec::new(),
            actors: Vec::new(),
            bundles: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let message = status.message();
    assert!(
        message.contains(&format!("v{}", PROTOCOL_VERSION + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("v{PROTOCOL_VERSION}"))
            && message.contains("raylet at 127.0.0.1:9"),
        "{message}"
    );

    let ok = head
        .register_node(RegisterNodeRequest {
            protocol_version: PROTOCOL_VERSION,
            node: Some(node()),
            objects: Vec::new(),
            actors: Vec::new(),
            bundles: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().heartbeat_interval_ms, 500);
}

#[tokio::test]
async fn kv_survives_a_head_restart_and_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (address, stop) = start_head(dir.path()).await;
    let mut head = client(&address, "secret").await;
    let put = |value: &[u8], overwrite| KvPutRequest {
        namespace: "jobs".into(),
        key: "k".into(),
        value: value.to_vec(),
        overwrite,
    };
    assert!(
        head.kv_put(put(b"one", false))
            .await
            .unwrap()
            .into_inner()
            .written
    );
    assert!(
        !head
            .kv_put(put(b"two", false))
            .await
            .unwrap()
            .into_inner()
            .written
    );
    let mut intruder = client(&address, "guess").await;
    let status = intruder.kv_put(put(b"evil", true)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    stop.send(()).unwrap();
    drop(head);

    let (address, _stop) = restart_head(dir.path()).await;
    let mut head = client(&address, "secret").await;
    let got = head
        .kv_get(KvGetRequest {
            namespace: "jobs".into(),
            key: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value.as_deref(), Some(&b"one"[..]));
}

#[tokio::test]
async fn placement_groups_are_checked_and_survive_a_head_restart() {
    use photon_proto::v1::{
        Bundle, GetPlacementGroupRequest, ListPlacementGroupsRequest, PlacementGroupSpec,
        PlacementGroupState, PlacementStrategy, RemovePlacementGroupRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let (address, stop) = start_head(dir.path()).await;
    let mut head = client(&address, "secret").await;
    let id = photon_proto::PlacementGroupId::random();
    let gpu = |n: i64| Bundle {
        resources: [("GPU".to_string(), n * 10_000)].into(),
    };
    let spec = PlacementGroupSpec {
        group_id: id.to_vec(),
        name: "llm".into(),
        bundles: vec![gpu(1), gpu(1)],
        strategy: PlacementStrategy::StrictPack as i32,
        job_id: vec![0, 0, 0, 1],
    };
    let empty = head
        .create_placement_group(PlacementGroupSpec {
            group_id: photon_proto::PlacementGroupId::random().to_vec(),
            bundles: vec![Bundle::default()],
            ..spec.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("bundle 0"), "{}", empty.message());

    let created = head
        .create_placement_group(spec.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, PlacementGroupState::Pending as i32);
    assert_eq!(created.reason, "no live nodes in the cluster");
    stop.send(()).unwrap();
    drop(head);

    let (address, _stop) = restart_head(dir.path()).await;
    let mut head = client(&address, "secret").await;
    let again = head
        .get_placement_group(GetPlacementGroupRequest {
            group_id: id.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.spec, Some(spec));
    assert_eq!(again.state, PlacementGroupState::Pending as i32);
    let removed = head
        .remove_placement_group(RemovePlacementGroupRequest {
            group_id: id.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.state, PlacementGroupState::Removed as i32);
    let listed = head
        .list_placement_groups(ListPlacementGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, PlacementGroupState::Removed as i32);
}
