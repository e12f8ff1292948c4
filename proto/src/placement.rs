//! Where work goes: the node-choice policy shared by the head (actor
//! placement) and raylets (task spillback), so both follow one rule.
//!
//! GPU requests go to the live node with the least free GPU that still fits
//! (best fit, so fractional requests pack onto one GPU before opening
//! another); others follow a hybrid policy — pack onto nodes (in registration
//! order) until they are half used, then spread to the least used.

use crate::v1::{NodeRecord, NodeState, PlacementStrategy};
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

/// Places a placement group's bundles (each with its index in the group,
/// for messages) by `strategy` on the live `nodes` (sorted by
/// registration): the index of each bundle's node, or why the
/// group cannot be placed now ("infeasible: …" when no cluster of these nodes
/// could ever hold it, "waiting for resources: …" when it waits for room).
/// Within what the strategy allows, bundles go where `choose_node` would put
/// them: GPU bundles best fit, others packed before spread.
pub fn place_bundles(
    bundles: &[(usize, ResourceSet)],
    strategy: PlacementStrategy,
    nodes: &[NodeRecord],
) -> Result<Vec<usize>, String> {
    let alive: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].state == NodeState::Alive as i32)
        .collect();
    if alive.is_empty() {
        return Err("no live nodes in the cluster".into());
    }
    let total_of = |i: usize| {
        nodes[i]
            .info
            .as_ref()
            .map(|info| ResourceSet::from_proto(&info.total))
            .unwrap_or_default()
    };
    let name = strategy_name(strategy);
    for (index, bundle) in bundles {
        if !alive.iter().any(|&i| total_of(i).contains(bundle)) {
            return Err(format!(
                "infeasible: bundle {index} ({bundle}) fits no live node's total resources; add a node with it"
            ));
        }
    }
    let mut sum = ResourceSet::new();
    bundles.iter().for_each(|(_, b)| sum.add(b));
    match strategy {
        PlacementStrategy::StrictPack if !alive.iter().any(|&i| total_of(i).contains(&sum)) => {
            return Err(format!(
                "infeasible: {name} needs {sum} on one node, and no live node has that in total"
            ));
        }
        PlacementStrategy::StrictSpread if alive.len() < bundles.len() => {
            return Err(format!(
                "infeasible: {name} needs {} nodes, one per bundle, and {} are live",
                bundles.len(),
                alive.len()
            ));
        }
        _ => {}
    }
    // Free resources as placing proceeds: each bundle takes from its node.
    let mut free: Vec<ResourceSet> = nodes
        .iter()
        .map(|n| ResourceSet::from_proto(&n.available))
        .collect();
    let one_node = || {
        alive
            .iter()
            .copied()
            .filter(|&i| free[i].contains(&sum))
            .min_by_key(|&i| (free[i].get(names::GPU), free[i].get(names::CPU)))
    };
    if matches!(
        strategy,
        PlacementStrategy::Pack | PlacementStrategy::StrictPack
    ) && let Some(node) = one_node()
    {
        return Ok(vec![node; bundles.len()]);
    }
    if strategy == PlacementStrategy::StrictPack {
        return Err(format!(
            "waiting for resources: {name} needs {sum} free on one node, and none has it now"
        ));
    }
    let mut placed: Vec<usize> = Vec::with_capacity(bundles.len());
    for (index, bundle) in bundles {
        let fits: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| free[i].contains(bundle))
            .collect();
        let unused: Vec<usize> = fits
            .iter()
            .copied()
            .filter(|i| !placed.contains(i))
            .collect();
        let best_fit = |candidates: &[usize]| {
            candidates
                .iter()
                .copied()
                .min_by_key(|&i| (free[i].get(names::GPU), free[i].get(names::CPU)))
        };
        let chosen = match strategy {
            // Nodes this group already uses first, then the fullest that fits.
            PlacementStrategy::Pack => fits
                .iter()
                .copied()
                .find(|i| placed.contains(i))
                .or_else(|| best_fit(&fits)),
            PlacementStrategy::Spread => best_fit(&unused).or_else(|| best_fit(&fits)),
            PlacementStrategy::StrictSpread => best_fit(&unused),
            PlacementStrategy::StrictPack => unreachable!("placed on one node above"),
        };
        let Some(node) = chosen else {
            let how = if strategy == PlacementStrategy::StrictSpread {
                " on a node of its own"
            } else {
                ""
            };
            return Err(format!(
                "waiting for resources: bundle {index} ({bundle}) is not free{how} on any node now ({name})"
            ));
        };
        free[node].subtract(bundle);
        placed.push(node);
    }
    Ok(placed)
}

/// The strategy as users write it.
pub fn strategy_name(strategy: PlacementStrategy) -> &'static str {
    match strategy {
        PlacementStrategy::Pack => "PACK",
        PlacementStrategy::Spread => "SPREAD",
        PlacementStrategy::StrictPack => "STRICT_PACK",
        PlacementStrategy::StrictSpread => "STRICT_SPREAD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_gpu(cpus: i64, gpus: i64) -> ResourceSet {
        ResourceSet::new()
            .with("CPU", Quantity::whole(cpus))
            .with("GPU", Quantity::whole(gpus))
    }

    fn indexed(bundles: &[ResourceSet]) -> Vec<(usize, ResourceSet)> {
        bundles.iter().cloned().enumerate().collect()
    }

    fn gpu_node(gpus: i64, free_gpus: i64) -> NodeRecord {
        node(4, gpus, free_gpus * 10_000, None)
    }

    #[test]
    fn strict_pack_takes_one_node_or_waits_with_the_reason() {
        let one_gpu = [cpu_gpu(1, 1), cpu_gpu(1, 1)];
        let nodes = [gpu_node(1, 1), gpu_node(2, 2)];
        assert_eq!(
            place_bundles(&indexed(&one_gpu), PlacementStrategy::StrictPack, &nodes).unwrap(),
            [1, 1]
        );
        let split = [gpu_node(1, 1), gpu_node(1, 1)];
        let infeasible =
            place_bundles(&indexed(&one_gpu), PlacementStrategy::StrictPack, &split).unwrap_err();
        assert!(
            infeasible.starts_with("infeasible: STRICT_PACK needs")
                && infeasible.contains("GPU: 2"),
            "{infeasible}"
        );
        let busy = [gpu_node(1, 1), gpu_node(2, 1)];
        let waiting =
            place_bundles(&indexed(&one_gpu), PlacementStrategy::StrictPack, &busy).unwrap_err();
        assert!(
            waiting.starts_with("waiting for resources: STRICT_PACK"),
            "{waiting}"
        );
        // PACK falls back to several nodes.
        assert_eq!(
            place_bundles(&indexed(&one_gpu), PlacementStrategy::Pack, &split).unwrap(),
            [0, 1]
        );
    }

    #[test]
    fn strict_spread_needs_a_node_per_bundle() {
        let bundles = [cpu_gpu(1, 0), cpu_gpu(1, 0), cpu_gpu(1, 0)];
        let nodes = [gpu_node(0, 0), gpu_node(0, 0), gpu_node(0, 0)];
        let mut placed =
            place_bundles(&indexed(&bundles), PlacementStrategy::StrictSpread, &nodes).unwrap();
        placed.sort_unstable();
        assert_eq!(placed, [0, 1, 2]);
        let short = place_bundles(
            &indexed(&bundles),
            PlacementStrategy::StrictSpread,
            &nodes[..2],
        )
        .unwrap_err();
        assert!(
            short.contains("needs 3 nodes, one per bundle, and 2 are live"),
            "{short}"
        );
        // SPREAD reuses nodes when it must.
        let placed =
            place_bundles(&indexed(&bundles), PlacementStrategy::Spread, &nodes[..2]).unwrap();
        assert_eq!(placed.len(), 3);
        assert_ne!(placed[0], placed[1]);
    }

    #[test]
    fn a_bundle_no_node_could_hold_is_infeasible() {
        let nodes = [gpu_node(1, 1)];
        let err =
            place_bundles(&indexed(&[cpu_gpu(1, 2)]), PlacementStrategy::Pack, &nodes).unwrap_err();
        assert!(err.starts_with("infeasible: bundle 0"), "{err}");
    }
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
