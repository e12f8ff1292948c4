//! `photon status`: the cluster as the head sees it.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::{GetClusterStatusRequest, NodeRecord, NodeState};
use photon_proto::{NodeId, ResourceSet};
use serde::Serialize;

use crate::session;

/// Arguments of `photon status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The head, HOST:PORT (default: PHOTON_ADDRESS or this machine's head).
    #[arg(long)]
    address: Option<String>,
    /// Cluster token (default: PHOTON_TOKEN or this machine's head).
    #[arg(long)]
    token: Option<String>,
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
    total: BTreeMap<String, f64>,
    available: BTreeMap<String, f64>,
    object_store_used: u64,
    object_store_capacity: u64,
    last_heartbeat_age_ms: u64,
    pid: u32,
}

#[derive(Debug, Serialize)]
struct ClusterView {
    address: String,
    cluster_id: String,
    protocol_version: u32,
    head_uptime_ms: u64,
    nodes: Vec<NodeView>,
}

fn amounts(map: &std::collections::HashMap<String, i64>) -> BTreeMap<String, f64> {
    ResourceSet::from_proto(map)
        .iter()
        .map(|(name, q)| (name.to_string(), q.as_f64()))
        .collect()
}

fn node_view(record: NodeRecord) -> NodeView {
    let info = record.info.unwrap_or_default();
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
        total: amounts(&info.total),
        available: amounts(&record.available),
        object_store_used: record.object_store_used,
        object_store_capacity: info.object_store_capacity,
        last_heartbeat_age_ms: record.last_heartbeat_age_ms,
        pid: info.pid,
    }
}

/// Runs `photon status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let address = session::resolve_address(args.address)?;
    let token = session::resolve_token(args.token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .with_context(|| format!("{address:?} is not a HOST:PORT address"))?
            .connect_timeout(std::time::Duration::from_secs(3));
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the head at {address}; is it running?"))?;
        let mut client = HeadClient::with_interceptor(
            channel,
            AttachToken::new(&token).map_err(anyhow::Error::msg)?,
        );
        client
            .get_cluster_status(GetClusterStatusRequest {})
            .await
            .map_err(|status| {
                anyhow::anyhow!("the head at {address} answered: {}", status.message())
            })
    })?;
    let reply = reply.into_inner();
    let view = ClusterView {
        address,
        cluster_id: reply.cluster_id,
        protocol_version: reply.protocol_version,
        head_uptime_ms: reply.head_uptime_ms,
        nodes: reply.nodes.into_iter().map(node_view).collect(),
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
    for node in &view.nodes {
        let short_id = &node.node_id[..node.node_id.len().min(12)];
        println!("\n  node {short_id}  {}  {}", node.address, node.state);
        if node.state == "dead" {
            println!("    died: {}", node.death_reason);
            continue;
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
