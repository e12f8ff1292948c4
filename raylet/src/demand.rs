//! Lease requests waiting for resources on this node. Every heartbeat
//! carries them, grouped by resource shape with the oldest wait and the
//! reason, so `photon status` shows what waits and why (and an autoscaler
//! can see what the cluster lacks) instead of tasks hanging silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use photon_proto::ResourceSet;
use photon_proto::v1::ResourceDemand;

struct Waiter {
    resources: ResourceSet,
    since: Instant,
}

/// The requests waiting now.
#[derive(Default)]
pub struct Demand {
    waiting: Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
}

/// A request counted as waiting until dropped (granted, spilled, cancelled).
pub struct Waiting<'a> {
    demand: &'a Demand,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.demand.lock().remove(&self.id);
    }
}

impl Demand {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request for `resources` as waiting while the guard lives.
    pub fn wait(&self, resources: &ResourceSet) -> Waiting<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Waiter {
                resources: resources.clone(),
                since: Instant::now(),
            },
        );
        Waiting { demand: self, id }
    }

    /// Requests waiting now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The waiting requests by shape, largest count first, each with why it
    /// waits given what the node has free.
    pub fn summary(&self, available: &ResourceSet) -> Vec<ResourceDemand> {
        let mut shapes: BTreeMap<BTreeMap<String, i64>, (u32, Instant, ResourceSet)> =
            BTreeMap::new();
        for waiter in self.lock().values() {
            let key: BTreeMap<String, i64> = waiter.resources.to_proto().into_iter().collect();
            let entry = shapes
                .entry(key)
                .or_insert((0, waiter.since, waiter.resources.clone()));
            entry.0 += 1;
            entry.1 = entry.1.min(waiter.since);
        }
        let mut demand: Vec<ResourceDemand> = shapes
            .into_iter()
            .map(|(resources, (count, since, shape))| ResourceDemand {
                resources: resources.into_iter().collect(),
                count,
                oldest_wait_ms: since.elapsed().as_millis() as u64,
                reason: reason(&shape, available),
            })
            .collect();
        demand.sort_by_key(|d| std::cmp::Reverse(d.count));
        demand
    }
}

fn reason(shape: &ResourceSet, available: &ResourceSet) -> String {
    match available.shortfall(shape) {
        // Whether another node has room is the spillback's business (and a
        // no-spillback request never asks): say only what this node knows.
        Some((name, wanted, free)) => {
            format!("waiting for {name}: each needs {wanted}, {free} free on this node")
        }
        None => "resources were just freed; being granted".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use photon_proto::Quantity;

    #[test]
    fn waiting_requests_are_grouped_by_shape_with_a_reason() {
        let demand = Demand::default();
        let one_cpu = ResourceSet::new().with("CPU", Quantity::whole(1));
        let gpu = ResourceSet::new().with("GPU", Quantity::from_units(5_000));
        let a = demand.wait(&one_cpu);
        let b = demand.wait(&one_cpu);
        let c = demand.wait(&gpu);
        let available = ResourceSet::new().with("CPU", Quantity::ZERO);
        let summary = demand.summary(&available);
        assert_eq!(summary.len(), 2);
        assert_eq!(summary[0].count, 2);
        assert_eq!(summary[0].resources.get("CPU"), Some(&10_000));
        assert!(
            summary[0]
                .reason
                .contains("waiting for CPU: each needs 1, 0 free"),
            "{}",
            summary[0].reason
        );
        assert!(
            summary[1]
                .reason
                .contains("waiting for GPU: each needs 0.5")
        );
        drop((a, c));
        assert_eq!(demand.count(), 1);
        drop(b);
        assert!(demand.summary(&available).is_empty());
    }
}
