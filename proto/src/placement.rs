//! Where work goes: the node-choice policy shared by the head (actor
//! placement) and raylets (task spillback), so both follow one rule.
//!
//! GPU requests go to the live node with the least free GPU that still fits
//! (best fit, so fractional requests pack onto one GPU before opening
//! another); others follow a hybrid policy — pack onto nodes (in registration
//! order) until they are half used, then spread to the least used.

use crate::v1::{NodeRecord, NodeState};
use crate::{Quantity, ResourceSet, names};

/// Past this share of its CPUs in use, a node is no longer packed onto.
const PACK_UNTIL_UTILIZATION: f64 = 0.5;

fn utilization(node: &NodeRecord) -> f64 {
    let info = node.info.as_ref();
    let total = info
        .map(|i| ResourceSet::from_proto(&i.total))
        .unwrap_or_default();
    let available = ResourceSet::from_proto(&node.available);
    let cpu_total = total.get(names::CPU).units();
    if cpu_total == 0 {
        return 1.0;
    }
    1.0 - available.get(names::CPU).units() as f64 / cpu_total as f64
}

/// Chooses a node for `request` among `nodes` (sorted by registration), or
/// says why none fits: the head places actors with it, and a raylet that
/// cannot fit a task spills it to the node it picks among the others.
pub fn choose_node<'a>(
    request: &ResourceSet,
    nodes: &'a [NodeRecord],
) -> Result<&'a NodeRecord, String> {
    let alive: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Alive as i32)
        .collect();
    if alive.is_empty() {
        return Err("no live nodes in the cluster".into());
    }
    let total_of = |n: &NodeRecord| {
        n.info
            .as_ref()
            .map(|i| ResourceSet::from_proto(&i.total))
            .unwrap_or_default()
    };
    let feasible: Vec<&NodeRecord> = alive
        .iter()
        .copied()
        .filter(|n| total_of(n).contains(request))
        .collect();
    if feasible.is_empty() {
        let (name, wanted, best) = alive
            .iter()
            .filter_map(|n| total_of(n).shortfall(request))
            .max_by_key(|(_, _, have)| *have)
            .expect("no feasible node means every node falls short");
        return Err(format!(
            "infeasible: it needs {name} {wanted} but the most any of the {} live node(s) has in total is {best}; add a node with it",
            alive.len()
        ));
    }
    let fits: Vec<&NodeRecord> = feasible
        .iter()
        .copied()
        .filter(|n| ResourceSet::from_proto(&n.available).contains(request))
        .collect();
    if fits.is_empty() {
        return Err(format!(
            "waiting for resources: {request} is not free on any of the {} node(s) that could run it",
            feasible.len()
        ));
    }
    let chosen = if request.get(names::GPU) > Quantity::ZERO {
        fits.iter()
            .copied()
            .min_by_key(|n| ResourceSet::from_proto(&n.available).get(names::GPU))
    } else {
        fits.iter()
            .copied()
            .find(|n| utilization(n) < PACK_UNTIL_UTILIZATION)
            .or_else(|| {
                fits.iter()
                    .copied()
                    .min_by(|a, b| utilization(a).total_cmp(&utilization(b)))
            })
    };
    Ok(chosen.expect("fits is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::v1::NodeInfo;

    fn node(cpus: i64, gpus: i64, free_gpu_units: i64, custom: Option<&str>) -> NodeRecord {
        let mut total = ResourceSet::new()
            .with("CPU", Quantity::whole(cpus))
            .with("GPU", Quantity::whole(gpus));
        if let Some(name) = custom {
            total.set(name, Quantity::whole(1));
        }
        let mut available = total.clone();
        available.set("GPU", Quantity::from_units(free_gpu_units));
        NodeRecord {
            info: Some(NodeInfo {
                node_id: NodeId::random().to_vec(),
                total: total.to_proto(),
                ..Default::default()
            }),
            state: NodeState::Alive as i32,
            available: available.to_proto(),
            ..Default::default()
        }
    }

    fn gpu(amount: f64) -> ResourceSet {
        ResourceSet::new().with("GPU", Quantity::from_f64("GPU", amount).unwrap())
    }

    #[test]
    fn gpu_actors_go_to_the_fullest_gpu_that_fits() {
        let nodes = [
            node(2, 1, 10_000, None),
            node(2, 1, 2_500, None),
            node(2, 1, 5_000, None),
        ];
        assert!(std::ptr::eq(
            choose_node(&gpu(0.25), &nodes).unwrap(),
            &nodes[1]
        ));
        assert!(std::ptr::eq(
            choose_node(&gpu(0.5), &nodes).unwrap(),
            &nodes[2]
        ));
    }

    #[test]
    fn custom_resources_only_one_node_has_decide_the_node() {
        let nodes = [
            node(2, 0, 0, None),
            node(2, 0, 0, None),
            node(2, 0, 0, Some("special")),
        ];
        let request = ResourceSet::new().with("special", Quantity::whole(1));
        assert!(std::ptr::eq(
            choose_node(&request, &nodes).unwrap(),
            &nodes[2]
        ));
    }

    #[test]
    fn reasons_tell_infeasible_from_busy() {
        let nodes = [node(2, 1, 0, None)];
        let busy = choose_node(&gpu(0.5), &nodes).unwrap_err();
        assert!(
            busy.starts_with("waiting for resources: GPU: 0.5 is not free"),
            "{busy}"
        );
        let infeasible = choose_node(&gpu(2.0), &nodes).unwrap_err();
        assert!(
            infeasible.contains("infeasible")
                && infeasible.contains("GPU 2")
                && infeasible.contains("is 1"),
            "{infeasible}"
        );
        assert_eq!(
            choose_node(&gpu(1.0), &[]).unwrap_err(),
            "no live nodes in the cluster"
        );
    }

    fn cpu_node(cpus: i64, free_cpus: f64) -> NodeRecord {
        let mut record = node(cpus, 0, 0, None);
        record.available = ResourceSet::new()
            .with("CPU", Quantity::from_f64("CPU", free_cpus).unwrap())
            .to_proto();
        record
    }

    #[test]
    fn cpu_work_packs_in_registration_order_until_half_used_then_spreads() {
        let cpu =
            |amount| ResourceSet::new().with("CPU", Quantity::from_f64("CPU", amount).unwrap());
        // The first node is a quarter used: pack onto it, not the emptier ones.
        let nodes = [cpu_node(4, 3.0), cpu_node(4, 4.0), cpu_node(4, 4.0)];
        assert!(std::ptr::eq(
            choose_node(&cpu(1.0), &nodes).unwrap(),
            &nodes[0]
        ));
        // Half used: the next one under half takes it.
        let nodes = [cpu_node(4, 2.0), cpu_node(4, 3.0), cpu_node(4, 4.0)];
        assert!(std::ptr::eq(
            choose_node(&cpu(1.0), &nodes).unwrap(),
            &nodes[1]
        ));
        // Every node at least half used: spread to the least used.
        let nodes = [cpu_node(4, 1.0), cpu_node(4, 2.0), cpu_node(4, 1.5)];
        assert!(std::ptr::eq(
            choose_node(&cpu(1.0), &nodes).unwrap(),
            &nodes[1]
        ));
    }
}
