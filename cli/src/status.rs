//! `photon status`: the cluster as the head sees it.

use std::collections::BTreeMap;

use clap::Args;
use photon_proto::placement::strategy_name;
use photon_proto::v1::{
    ActorRecord, ActorState, GetClusterStatusRequest, ListActorsRequest,
    ListPlacementGroupsRequest, NodeRecord, NodeState, PlacementGroupRecord, PlacementGroupState,
    PlacementStrategy,
};
use photon_proto::{ActorId, NodeId, PlacementGroupId, ResourceSet};
use serde::Serialize;

use crate::connect::{Head, HeadArgs};

/// Arguments of `photon status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    head: HeadArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct NodeView {
    node_id: String,
    address: String,
    hostname: String,
    state: &'static str,
    death_reason: String,
    /// Why the head could not dial the node's advertised address (empty: it could).
    unreachable: String,
    /// When the head declared it dead (0: alive).
    died_at_unix_ms: u64,
    total: BTreeMap<String, f64>,
    available: BTreeMap<String, f64>,
    object_store_used: u64,
    object_store_capacity: u64,
    /// Bytes pinned by readers or being written.
    object_store_pinned: u64,
    /// Objects in the store, in memory or spilled.
    object_store_objects: u64,
    /// Bytes of objects spilled to disk.
    object_store_spilled_bytes: u64,
    last_heartbeat_age_ms: u64,
    pid: u32,
    /// Where the raylet serves /metrics and health probes (empty: nowhere).
    metrics_address: String,
    /// Lease requests waiting on the node, by shape.
    pending: Vec<DemandView>,
}

#[derive(Debug, Serialize)]
struct DemandView {
    resources: BTreeMap<String, f64>,
    count: u32,
    oldest_wait_ms: u64,
    reason: String,
}

#[derive(Debug, Serialize)]
struct ActorView {
    actor_id: String,
    name: String,
    state: &'static str,
    resources: BTreeMap<String, f64>,
    node_address: String,
    cuda_visible_devices: String,
    pid: u32,
    restarts: u32,
    max_restarts: u32,
    reason: String,
}

fn actor_view(record: ActorRecord) -> ActorView {
    let spec = record.spec.unwrap_or_default();
    let state = match ActorState::try_from(record.state).unwrap_or(ActorState::Unspecified) {
        ActorState::Pending => "pending",
        ActorState::Alive => "alive",
        ActorState::Restarting => "restarting",
        ActorState::Dead => "dead",
        ActorState::Unspecified => "unknown",
    };
    ActorView {
        actor_id: ActorId::from_slice(&spec.actor_id)
            .map_or_else(|_| "?".into(), |id| id.to_string()),
        name: spec.name,
        state,
        resources: amounts(&spec.resources),
        node_address: record.node_address,
        cuda_visible_devices: record.cuda_visible_devices,
        pid: record.pid,
        restarts: record.restarts,
        max_restarts: spec.max_restarts,
        reason: record.reason,
    }
}

#[derive(Debug, Serialize)]
struct PlacementGroupView {
    group_id: String,
    name: String,
    state: &'static str,
    strategy: &'static str,
    bundles: Vec<BTreeMap<String, f64>>,
    /// The raylet address of each bundle's node (empty: not placed).
    bundle_addresses: Vec<String>,
    /// Why it is pending, or why it was removed.
    reason: String,
}

fn group_view(record: PlacementGroupRecord) -> PlacementGroupView {
    let spec = record.spec.unwrap_or_default();
    let state = match PlacementGroupState::try_from(record.state)
        .unwrap_or(PlacementGroupState::Unspecified)
    {
        PlacementGroupState::Pending => "pending",
        PlacementGroupState::Created => "created",
        PlacementGroupState::Removed => "removed",
        PlacementGroupState::Unspecified => "unknown",
    };
    PlacementGroupView {
        group_id: PlacementGroupId::from_slice(&spec.group_id)
            .map_or_else(|_| "?".into(), |id| id.to_string()),
        name: spec.name,
        state,
        strategy: strategy_name(
            PlacementStrategy::try_from(spec.strategy).unwrap_or(PlacementStrategy::Pack),
        ),
        bundles: spec.bundles.iter().map(|b| amounts(&b.resources)).collect(),
        bundle_addresses: record.bundle_addresses,
        reason: record.reason,
    }
}

#[derive(Debug, Serialize)]
struct ClusterView {
    address: String,
    cluster_id: String,
    protocol_version: u32,
    head_uptime_ms: u64,
    /// Where the head serves its status page and /metrics (empty: nowhere).
    metrics_address: String,
    /// Lineage records the head holds (one per live object a task produced).
    lineage_records: u64,
    nodes: Vec<NodeView>,
    actors: Vec<ActorView>,
    placement_groups: Vec<PlacementGroupView>,
}

fn amounts(map: &std::collections::HashMap<String, i64>) -> BTreeMap<String, f64> {
    ResourceSet::from_proto(map)
        .iter()
        .map(|(name, q)| (name.to_string(), q.as_f64()))
        .collect()
}

fn node_view(record: NodeRecord) -> NodeView {
    let info = record.info.unwrap_or_default();
    let store = record.store.unwrap_or_default();
    NodeView {
        node_id: NodeId::from_slice(&info.node_id).map_or_else(|_| "?".into(), |id| id.to_string()),
        address: info.address,
        hostname: info.hostname,
        state: if record.state == NodeState::Alive as i32 {
            "alive"
        } else {
            "dead"
        },
        death_reason: record.death_reason,
        unreachable: record.unreachable,
        died_at_unix_ms: record.died_at_unix_ms,
        total: amounts(&info.total),
        available: amounts(&record.available),
        object_store_used: record.object_store_used,
        object_store_capacity: info.object_store_capacity,
        object_store_pinned: store.pinned,
        object_store_objects: store.objects,
        object_store_spilled_bytes: store.spilled_bytes,
        last_heartbeat_age_ms: record.last_heartbeat_age_ms,
        pid: info.pid,
        metrics_address: info.metrics_address,
        pending: record
            .pending
            .into_iter()
            .map(|d| DemandView {
                resources: amounts(&d.resources),
                count: d.count,
                oldest_wait_ms: d.oldest_wait_ms,
                reason: d.reason,
            })
            .collect(),
    }
}

/// Runs `photon status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (address, reply) = runtime.block_on(async {
        let head = Head::connect(&args.head).await?;
        let mut client = head.head();
        let answered = |status| head.refused(status);
        let cluster = client
            .get_cluster_status(GetClusterStatusRequest {})
            .await
            .map_err(answered)?;
        let actors = client
            .list_actors(ListActorsRequest {})
            .await
            .map_err(answered)?;
        let groups = client
            .list_placement_groups(ListPlacementGroupsRequest {})
            .await
            .map_err(answered)?;
        Ok::<_, anyhow::Error>((
            head.address.clone(),
            (
                cluster.into_inner(),
                actors.into_inner().actors,
                groups.into_inner().groups,
            ),
        ))
    })?;
    let (reply, actors, groups) = reply;
    let view = ClusterView {
        address,
        cluster_id: reply.cluster_id,
        protocol_version: reply.protocol_version,
        head_uptime_ms: reply.head_uptime_ms,
        metrics_address: reply.metrics_address,
        lineage_records: reply.lineage_records,
        nodes: reply.nodes.into_iter().map(node_view).collect(),
        actors: actors.into_iter().map(actor_view).collect(),
        placement_groups: groups.into_iter().map(group_view).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let alive = view.nodes.iter().filter(|n| n.state == "alive").count();
    println!(
        "cluster {} at {} — {alive} node(s) alive, {} dead",
        view.cluster_id,
        view.address,
        view.nodes.len() - alive
    );
    if !view.metrics_address.is_empty() {
        let scheme = if photon_proto::tls::current().is_some() {
            "https"
        } else {
            "http"
        };
        println!("status page: {scheme}://{}/", view.metrics_address);
    }
    for node in &view.nodes {
        let short_id = &node.node_id[..node.node_id.len().min(12)];
        println!("\n  node {short_id}  {}  {}", node.address, node.state);
        if node.state == "dead" {
            println!("    died: {}", node.death_reason);
            continue;
        }
        if !node.unreachable.is_empty() {
            println!("    UNREACHABLE: {}", node.unreachable);
        }
        for (name, total) in &node.total {
            let available = node.available.get(name).copied().unwrap_or(0.0);
            let (used, total, unit) = if name == "memory" || name == "gpu_memory" {
                (
                    (total - available) / 1073741824.0,
                    total / 1073741824.0,
                    " GiB",
                )
            } else {
                (total - available, *total, "")
            };
            println!(
                "    {name:<12} {}  {used:.2}/{total:.2}{unit}",
                bar(used, total)
            );
        }
        println!(
            "    {:<12} {}  {:.1}/{:.1} GiB",
            "objects",
            bar(
                node.object_store_used as f64,
                node.object_store_capacity as f64
            ),
            node.object_store_used as f64 / 1073741824.0,
            node.object_store_capacity as f64 / 1073741824.0
        );
        for demand in &node.pending {
            let shape: Vec<String> = demand
                .resources
                .iter()
                .map(|(name, amount)| format!("{name}: {amount}"))
                .collect();
            println!(
                "    pending      {} × {{{}}} for {:.1}s: {}",
                demand.count,
                shape.join(", "),
                demand.oldest_wait_ms as f64 / 1000.0,
                demand.reason
            );
        }
    }
    let waiting: u32 = view
        .nodes
        .iter()
        .flat_map(|n| &n.pending)
        .map(|d| d.count)
        .sum();
    if waiting > 0 {
        println!("\npending demand: {waiting} lease request(s) waiting for resources");
    }
    if !view.actors.is_empty() {
        let count = |state| view.actors.iter().filter(|a| a.state == state).count();
        println!(
            "\nactors: {} alive, {} pending, {} restarting, {} dead",
            count("alive"),
            count("pending"),
            count("restarting"),
            count("dead")
        );
        for actor in view
            .actors
            .iter()
            .filter(|a| a.state == "pending" || a.state == "restarting")
        {
            println!(
                "  {} {} ({}): {}",
                actor.state, actor.name, actor.actor_id, actor.reason
            );
        }
    }
    let groups: Vec<&PlacementGroupView> = view
        .placement_groups
        .iter()
        .filter(|g| g.state != "removed")
        .collect();
    if !groups.is_empty() {
        println!(
            "
placement groups:"
        );
        for group in groups {
            let bundles: Vec<String> = group
                .bundles
                .iter()
                .map(|b| {
                    let parts: Vec<String> =
                        b.iter().map(|(name, n)| format!("{name}: {n}")).collect();
                    format!("{{{}}}", parts.join(", "))
                })
                .collect();
            println!(
                "  {} {} ({}) {} {}",
                group.state,
                group.name,
                group.group_id,
                group.strategy,
                bundles.join(" ")
            );
            if group.state == "pending" {
                println!("    {}", group.reason);
            } else {
                println!("    on {}", group.bundle_addresses.join(", "));
            }
        }
    }
    Ok(())
}

/// A 20-character usage bar.
fn bar(used: f64, total: f64) -> String {
    let filled = if total > 0.0 {
        ((used / total) * 20.0).round() as usize
    } else {
        0
    };
    format!(
        "[{}{}]",
        "#".repeat(filled.min(20)),
        ".".repeat(20 - filled.min(20))
    )
}
