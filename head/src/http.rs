//! The head's HTTP side: the status page (`/`, its data at `/api/status`,
//! job logs at `/api/jobs/{id}/logs`), Prometheus `/metrics`, and
//! `/healthz` / `/readyz` for Kubernetes probes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use photon_ops::{Labels, Metrics, labels};
use photon_proto::v1::{ActorRecord, ActorState, JobRecord, NodeRecord, NodeState};
use photon_proto::{ActorId, NodeId, ResourceSet};
use serde_json::{Value, json};

use crate::jobs::{STATES, state_name};
use crate::service::HeadState;

/// The page: one file, no external assets, so it works without internet.
const STATUS_PAGE: &str = include_str!("status_page.html");
/// The most of a job's log the page shows (its end).
const PAGE_LOG_BYTES: u64 = 256 << 10;

/// The head's HTTP routes.
pub(crate) fn router(state: Arc<HeadState>, readiness: photon_ops::Readiness) -> axum::Router {
    let metrics_state = state.clone();
    let pages = axum::Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .route("/api/status", get(api_status))
        .route("/api/jobs/{id}/logs", get(job_log))
        .with_state(state);
    photon_ops::router(readiness, move || head_metrics(&metrics_state)).merge(pages)
}

fn node_state(record: &NodeRecord) -> &'static str {
    if record.state == NodeState::Alive as i32 {
        "alive"
    } else {
        "dead"
    }
}

fn actor_state(state: i32) -> &'static str {
    match ActorState::try_from(state).unwrap_or(ActorState::Unspecified) {
        ActorState::Pending => "pending",
        ActorState::Alive => "alive",
        ActorState::Restarting => "restarting",
        ActorState::Dead => "dead",
        ActorState::Unspecified => "unknown",
    }
}

fn node_id(record: &NodeRecord) -> String {
    record
        .info
        .as_ref()
        .and_then(|i| NodeId::from_slice(&i.node_id).ok())
        .map_or_else(String::new, |id| id.to_string())
}

/// `(resource, total, used)` of a node, in whole units (bytes for memory).
fn node_resources(record: &NodeRecord) -> Vec<(String, f64, f64)> {
    let total = ResourceSet::from_proto(
        &record
            .info
            .as_ref()
            .map(|i| i.total.clone())
            .unwrap_or_default(),
    );
    let available = ResourceSet::from_proto(&record.available);
    total
        .iter()
        .map(|(name, amount)| {
            let free = available.get(name).as_f64();
            (
                name.to_string(),
                amount.as_f64(),
                (amount.as_f64() - free).max(0.0),
            )
        })
        .collect()
}

fn node_json(record: &NodeRecord) -> Value {
    let info = record.info.clone().unwrap_or_default();
    let store = record.store.unwrap_or_default();
    let resources: BTreeMap<String, Value> = node_resources(record)
        .into_iter()
        .map(|(name, total, used)| (name, json!({"total": total, "used": used})))
        .collect();
    json!({
        "node_id": node_id(record),
        "address": info.address,
        "hostname": info.hostname,
        "state": node_state(record),
        "death_reason": record.death_reason,
        "unreachable": record.unreachable,
        "resources": resources,
        "object_store_used": record.object_store_used,
        "object_store_capacity": info.object_store_capacity,
        "object_store_pinned": store.pinned,
        "object_store_objects": store.objects,
        "object_store_spilled_bytes": store.spilled_bytes,
        "last_heartbeat_age_ms": record.last_heartbeat_age_ms,
        "pending_requests": record.pending.iter().map(|d| d.count).sum::<u32>(),
        "metrics_address": info.metrics_address,
    })
}

fn job_json(record: &JobRecord) -> Value {
    json!({
        "job_id": record.job_id,
        "name": record.name,
        "state": state_name(record.state),
        "entrypoint": std::iter::once(record.program.as_str())
            .chain(record.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        "exit_code": record.exit_code,
        "message": record.message,
        "submitted_at_unix_ms": record.submitted_at_unix_ms,
        "started_at_unix_ms": record.started_at_unix_ms,
        "ended_at_unix_ms": record.ended_at_unix_ms,
    })
}

fn actor_json(record: &ActorRecord) -> Value {
    let spec = record.spec.clone().unwrap_or_default();
    json!({
        "actor_id": ActorId::from_slice(&spec.actor_id).map(|id| id.to_string()).unwrap_or_default(),
        "name": spec.name,
        "class": spec.class_name,
        "state": actor_state(record.state),
        "node_address": record.node_address,
        "restarts": record.restarts,
        "reason": record.reason,
    })
}

async fn api_status(State(state): State<Arc<HeadState>>) -> Json<Value> {
    let nodes: Vec<Value> = state.nodes.snapshot().iter().map(node_json).collect();
    let jobs: Vec<Value> = state.jobs.all().iter().rev().map(job_json).collect();
    let actors: Vec<Value> = state.actors.all().iter().map(actor_json).collect();
    Json(json!({
        "cluster_id": state.cluster_id,
        "head_address": state.address,
        "head_uptime_ms": state.started.elapsed().as_millis() as u64,
        "lineage_records": state.lineage.len(),
        "nodes": nodes,
        "jobs": jobs,
        "actors": actors,
    }))
}

async fn job_log(State(state): State<Arc<HeadState>>, Path(id): Path<String>) -> Response {
    let Some(record) = state.jobs.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no job {id:?} on this cluster\n"),
        )
            .into_response();
    };
    let path = std::path::PathBuf::from(record.log_path);
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut tail = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&path) {
            let length = file.metadata().map_or(0, |m| m.len());
            let start = length.saturating_sub(PAGE_LOG_BYTES);
            if file.seek(SeekFrom::Start(start)).is_ok() {
                let _ = file.take(PAGE_LOG_BYTES).read_to_end(&mut tail);
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// The cluster as Prometheus metrics. Resource amounts are in whole units
/// (CPUs, GPUs with fractions, bytes of memory).
pub(crate) fn head_metrics(state: &HeadState) -> Metrics {
    let nodes = state.nodes.snapshot();
    let mut metrics = Metrics::default();
    let by_state = |wanted: &str| nodes.iter().filter(|n| node_state(n) == wanted).count() as f64;
    metrics.gauge(
        "photon_nodes",
        "Nodes the head knows, by state",
        ["alive", "dead"].map(|s| (labels([("state", &s)]), by_state(s))),
    );
    let alive: Vec<&NodeRecord> = nodes.iter().filter(|n| node_state(n) == "alive").collect();
    let per_node = |value: fn(&(String, f64, f64)) -> f64| -> Vec<(Labels, f64)> {
        alive
            .iter()
            .flat_map(|node| {
                let id = node_id(node);
                node_resources(node)
                    .into_iter()
                    .map(move |r| (labels([("node", &id), ("resource", &r.0)]), value(&r)))
            })
            .collect()
    };
    metrics
        .gauge(
            "photon_node_resource_capacity",
            "Resources of each live node (CPUs, GPUs, bytes of memory, custom units)",
            per_node(|r| r.1),
        )
        .gauge(
            "photon_node_resource_used",
            "Resources in use on each live node, fractional GPUs included",
            per_node(|r| r.2),
        );
    let mut cluster: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for node in &alive {
        for (name, total, used) in node_resources(node) {
            let entry = cluster.entry(name).or_default();
            entry.0 += total;
            entry.1 += used;
        }
    }
    metrics
        .gauge(
            "photon_cluster_resource_capacity",
            "Resources of all live nodes together",
            cluster.iter().map(|(name, v)| (labels([("resource", name)]), v.0)),
        )
        .gauge(
            "photon_cluster_resource_used",
            "Resources in use on all live nodes together",
            cluster.iter().map(|(name, v)| (labels([("resource", name)]), v.1)),
        )
        .gauge(
            "photon_node_object_store_used_bytes",
            "Shared memory used by each live node's object store",
            alive.iter().map(|n| (labels([("node", &node_id(n))]), n.object_store_used as f64)),
        )
        .gauge(
            "photon_node_object_store_capacity_bytes",
            "Shared memory of each live node's object store",
            alive.iter().map(|n| {
                let capacity = n.info.as_ref().map_or(0, |i| i.object_store_capacity);
                (labels([("node", &node_id(n))]), capacity as f64)
            }),
        )
        .gauge(
            "photon_node_heartbeat_age_seconds",
            "Time since each live node's last heartbeat (its heartbeat latency as the head sees it)",
            alive.iter().map(|n| {
                (labels([("node", &node_id(n))]), n.last_heartbeat_age_ms as f64 / 1000.0)
            }),
        )
        .gauge(
            "photon_node_pending_lease_requests",
            "Lease requests waiting for resources on each live node",
            alive.iter().map(|n| {
                let count: u32 = n.pending.iter().map(|d| d.count).sum();
                (labels([("node", &node_id(n))]), f64::from(count))
            }),
        );
    let actors = state.actors.all();
    metrics.gauge(
        "photon_actors",
        "Actors by state",
        ["pending", "alive", "restarting", "dead"].map(|wanted| {
            let count = actors
                .iter()
                .filter(|a| actor_state(a.state) == wanted)
                .count();
            (labels([("state", &wanted)]), count as f64)
        }),
    );
    let jobs = state.jobs.all();
    metrics
        .gauge(
            "photon_jobs",
            "Submitted jobs by state",
            STATES.map(|wanted| {
                let count = jobs.iter().filter(|j| j.state == wanted as i32).count();
                (
                    labels([("state", &state_name(wanted as i32))]),
                    count as f64,
                )
            }),
        )
        .gauge(
            "photon_lineage_records",
            "Lineage records the head holds (one per live object a task produced)",
            [(Vec::new(), state.lineage.len() as f64)],
        )
        .gauge(
            "photon_head_uptime_seconds",
            "Time since this head process started",
            [(Vec::new(), state.started.elapsed().as_secs_f64())],
        );
    metrics
}
