//! The raylet's HTTP side: `/metrics` (this node's resources, object store,
//! leases and workers) and `/healthz` / `/readyz` (ready once registered).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use photon_object_store::ObjectStore;
use photon_ops::{Metrics, labels};

use crate::actors::ActorHost;
use crate::leases::LeaseManager;
use crate::transfer::FetchCounts;
use crate::worker_pool::WorkerPool;

/// What the metrics are read from.
pub(crate) struct NodeView {
    pub store: ObjectStore,
    pub actors: Arc<ActorHost>,
    pub leases: Arc<LeaseManager>,
    pub pool: Arc<WorkerPool>,
    pub fetched: Arc<FetchCounts>,
    pub node_id: String,
}

/// The raylet's routes.
pub(crate) fn router(view: NodeView, readiness: photon_ops::Readiness) -> axum::Router {
    photon_ops::router(readiness, move || node_metrics(&view))
}

/// This node as Prometheus metrics; resources in whole units (CPUs, GPUs
/// with fractions, bytes of memory).
fn node_metrics(view: &NodeView) -> Metrics {
    let node = &view.node_id;
    let total = view.actors.total().clone();
    let available = view.actors.available();
    let stats = view.store.stats();
    let mut metrics = Metrics::default();
    metrics
        .gauge(
            "photon_raylet_resource_capacity",
            "Resources of this node",
            total.iter().map(|(name, amount)| {
                (
                    labels([("node", node), ("resource", &name)]),
                    amount.as_f64(),
                )
            }),
        )
        .gauge(
            "photon_raylet_resource_used",
            "Resources held on this node by actors and leased workers, fractional GPUs included",
            total.iter().map(|(name, amount)| {
                let used = (amount.as_f64() - available.get(name).as_f64()).max(0.0);
                (labels([("node", node), ("resource", &name)]), used)
            }),
        );
    let store_gauges: [(&str, &str, u64); 5] = [
        (
            "photon_object_store_capacity_bytes",
            "Shared memory of this node's object store",
            stats.capacity,
        ),
        (
            "photon_object_store_used_bytes",
            "Object store bytes allocated to objects in memory",
            stats.used,
        ),
        (
            "photon_object_store_pinned_bytes",
            "Object store bytes that cannot be evicted or spilled now",
            stats.pinned,
        ),
        (
            "photon_object_store_spilled_bytes",
            "Bytes of objects spilled to disk now",
            stats.spilled_bytes,
        ),
        (
            "photon_object_store_objects",
            "Objects in the store, in memory or spilled",
            stats.objects,
        ),
    ];
    for (name, help, value) in store_gauges {
        metrics.gauge(name, help, [(labels([("node", node)]), value as f64)]);
    }
    metrics
        .counter(
            "photon_object_store_spills",
            "Objects spilled to disk since the raylet started",
            [(labels([("node", node)]), stats.spills_total)],
        )
        .counter(
            "photon_object_store_restores",
            "Objects restored from spill since the raylet started",
            [(labels([("node", node)]), stats.restores_total)],
        )
        .counter(
            "photon_objects_fetched",
            "Objects this node pulled from other nodes since the raylet started",
            [(labels([("node", node)]), view.fetched.objects.load(Relaxed))],
        )
        .counter(
            "photon_object_fetched_bytes",
            "Bytes of the objects this node pulled from other nodes since the raylet started",
            [(labels([("node", node)]), view.fetched.bytes.load(Relaxed))],
        )
        .counter(
            "photon_object_store_evictions",
            "Secondary copies evicted since the raylet started",
            [(labels([("node", node)]), stats.evictions)],
        )
        .gauge(
            "photon_lease_requests_pending",
            "Task lease requests waiting for resources on this node",
            [(
                labels([("node", node)]),
                view.actors.demand().count() as f64,
            )],
        )
        .gauge(
            "photon_leases_active",
            "Workers leased to drivers for tasks now",
            [(labels([("node", node)]), view.leases.leased() as f64)],
        )
        .counter(
            "photon_leases_granted",
            "Task leases granted since the raylet started",
            [(labels([("node", node)]), view.leases.granted_total())],
        )
        .gauge(
            "photon_workers",
            "Live worker processes on this node",
            [(labels([("node", node)]), view.pool.live().len() as f64)],
        )
        .gauge(
            "photon_actors_running",
            "Actors whose workers run on this node",
            [(labels([("node", node)]), view.actors.running().len() as f64)],
        )
        .counter(
            "photon_worker_exits",
            "Worker processes that ended, by how (exited, signaled, oom: killed for memory)",
            view.pool
                .exit_counts()
                .into_iter()
                .map(|(how, count)| (labels([("node", node), ("reason", &how)]), count)),
        );
    metrics
}
