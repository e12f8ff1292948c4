//! Autoscaling worker groups from the head's pending demand: lease requests
//! that wait for resources (what `photon status` and the head's
//! `photon_node_pending_lease_requests` metric show) add a worker to a
//! group that can serve them, up to its `maxReplicas`; workers whose node
//! has been idle for `idleSeconds` are removed, down to `minReplicas`.
//!
//! One worker per waiting request shape and pass, and only to a group whose
//! wanted workers are all ready: a conservative step, since one node may
//! serve several waiting requests and a starting pod may be what they wait for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::{GetClusterStatusRequest, NodeState};
use photon_proto::{ResourceSet, names};

/// One group as the autoscaler sees it.
#[derive(Debug, Clone)]
pub struct GroupLoad {
    /// Workers wanted now (the count the last pass settled on).
    pub live: u32,
    /// Of those, ready.
    pub ready: u32,
    /// Bounds.
    pub min: u32,
    /// Bounds.
    pub max: u32,
    /// Whether its workers have GPUs.
    pub gpus: bool,
    /// Its workers idle long enough to be removed.
    pub idle: Vec<String>,
}

/// Requests of one shape waiting somewhere in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// They need a GPU (or a fraction of one).
    pub needs_gpu: bool,
    /// How many wait.
    pub count: u32,
}

/// The wanted worker count of each group.
pub fn desired(groups: &[GroupLoad], demands: &[Demand]) -> Vec<u32> {
    let mut desired: Vec<u32> = groups.iter().map(|g| g.live.clamp(g.min, g.max)).collect();
    let waiting: Vec<&Demand> = demands.iter().filter(|d| d.count > 0).collect();
    for demand in &waiting {
        // GPU requests only fit GPU groups; CPU requests go to CPU groups
        // first, so that GPUs are not bought for CPU work.
        let mut order: Vec<usize> = (0..groups.len())
            .filter(|&i| !demand.needs_gpu || groups[i].gpus)
            .collect();
        order.sort_by_key(|&i| groups[i].gpus);
        // A group still starting the workers it was given does not grow:
        // the demand may be waiting for exactly those.
        let can_grow = |i: usize| desired[i] < groups[i].max && groups[i].ready >= groups[i].live;
        if let Some(&i) = order.iter().find(|&&i| can_grow(i)) {
            desired[i] += 1;
        }
    }
    if waiting.is_empty() {
        for (want, group) in desired.iter_mut().zip(groups) {
            *want = want.saturating_sub(group.idle.len() as u32).max(group.min);
        }
    }
    desired
}

/// What the head says about its nodes: waiting demand, and which node
/// hosts (the raylet's advertised IP: the pod's) are idle.
#[derive(Debug, Default)]
pub struct HeadView {
    /// Waiting requests by shape.
    pub demands: Vec<Demand>,
    /// Hosts of live nodes with nothing in use and nothing waiting.
    pub idle_hosts: Vec<String>,
}

/// Asks the head at `address` for its nodes.
pub async fn head_view(address: &str, token: &str) -> Result<HeadView, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("head address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    let attach = AttachToken::new(token).map_err(|e| format!("the cluster token: {e}"))?;
    let mut head = HeadClient::with_interceptor(endpoint.connect_lazy(), attach);
    let status = head
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .map_err(|s| format!("the head at {address}: {}", s.message()))?
        .into_inner();
    let mut view = HeadView::default();
    for node in status.nodes {
        if node.state != NodeState::Alive as i32 {
            continue;
        }
        for demand in &node.pending {
            let shape = ResourceSet::from_proto(&demand.resources);
            view.demands.push(Demand {
                needs_gpu: shape.get(names::GPU) > photon_proto::Quantity::ZERO,
                count: demand.count,
            });
        }
        let info = node.info.unwrap_or_default();
        let total = ResourceSet::from_proto(&info.total);
        let available = ResourceSet::from_proto(&node.available);
        let busy = [names::CPU, names::GPU]
            .iter()
            .any(|name| available.get(name) < total.get(name));
        if node.pending.is_empty() && !busy {
            let host = info
                .address
                .rsplit_once(':')
                .map_or(info.address.as_str(), |(h, _)| h);
            view.idle_hosts.push(host.to_string());
        }
    }
    Ok(view)
}

/// Since when each worker pod has been idle, as this operator has seen it.
#[derive(Default)]
pub struct IdleClock {
    since: std::sync::Mutex<HashMap<String, Instant>>,
}

impl IdleClock {
    /// Notes which `pods` (name, IP) are idle now; returns those idle for at
    /// least `wait`.
    pub fn idle_for(
        &self,
        pods: &[(String, String)],
        idle_hosts: &[String],
        wait: Duration,
    ) -> Vec<String> {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut long_idle = Vec::new();
        for (name, ip) in pods {
            if idle_hosts.contains(ip) {
                let first = *since.entry(name.clone()).or_insert(now);
                if now.duration_since(first) >= wait {
                    long_idle.push(name.clone());
                }
            } else {
                since.remove(name);
            }
        }
        long_idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(live: u32, min: u32, max: u32, gpus: bool, idle: &[&str]) -> GroupLoad {
        GroupLoad {
            live,
            ready: live,
            min,
            max,
            gpus,
            idle: idle.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn demand_grows_the_group_that_fits_and_idleness_shrinks_to_min() {
        let groups = [group(1, 1, 3, false, &[]), group(0, 0, 2, true, &[])];
        let cpu = Demand {
            needs_gpu: false,
            count: 4,
        };
        let gpu = Demand {
            needs_gpu: true,
            count: 1,
        };
        assert_eq!(desired(&groups, &[cpu]), [2, 0]);
        assert_eq!(desired(&groups, &[gpu]), [1, 1]);
        assert_eq!(desired(&groups, &[cpu, gpu]), [2, 1]);
        // A full CPU group spills CPU work onto the GPU group; nothing beyond max.
        let full = [group(3, 1, 3, false, &[]), group(2, 0, 2, true, &[])];
        assert_eq!(desired(&full, &[cpu]), [3, 2]);
        // A group whose new worker is not ready yet waits for it.
        let starting = [GroupLoad {
            ready: 1,
            ..group(2, 1, 3, false, &[])
        }];
        assert_eq!(desired(&starting, &[cpu]), [2]);
        // No demand: idle workers go, down to min.
        let idle = [
            group(3, 1, 3, false, &["a", "b", "c"]),
            group(2, 0, 2, true, &["g"]),
        ];
        assert_eq!(desired(&idle, &[]), [1, 1]);
        // Demand keeps idle workers (they may be about to get work).
        assert_eq!(desired(&idle, &[gpu]), [3, 2]);
    }

    #[test]
    fn the_idle_clock_counts_from_when_a_pod_was_first_seen_idle() {
        let clock = IdleClock::default();
        let pods = [
            ("w-0".to_string(), "10.0.0.1".to_string()),
            ("w-1".to_string(), "10.0.0.2".to_string()),
        ];
        let idle = ["10.0.0.1".to_string()];
        assert_eq!(clock.idle_for(&pods, &idle, Duration::ZERO), ["w-0"]);
        assert!(
            clock
                .idle_for(&pods, &idle, Duration::from_secs(60))
                .is_empty()
        );
        // Busy again: the clock restarts.
        assert!(clock.idle_for(&pods, &[], Duration::ZERO).is_empty());
    }
}
