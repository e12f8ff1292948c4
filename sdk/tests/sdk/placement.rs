//! Placement groups on a loopback cluster of raylet processes: bundles
//! reserved together by strategy, tasks and actors run in them, pending
//! groups say why, and removal ends what runs inside and frees the resources.

use std::time::Duration;

use libtest_mimic::Failed;
use photon::testing::LoopbackCluster;
use photon::{
    ActorOptions, Bundle, Context, Error, PlacementGroupState, PlacementStrategy, TaskOptions,
};

use crate::{check, wait_until};

/// The node this runs on, and the GPUs it sees.
#[photon::remote(num_cpus = 0)]
pub fn where_am_i() -> (String, String) {
    (
        photon::where_this_runs(),
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
    )
}

/// Writes `marker` once running, then sleeps for `seconds` (to be ended by
/// a group's removal).
#[photon::remote]
pub async fn linger(seconds: u64, marker: String) -> u64 {
    std::fs::write(&marker, b"running").expect("marker written");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    seconds
}

/// Holds a GPU of its bundle and says which.
pub struct GpuHolder;

#[photon::actor(num_cpus = 0, num_gpus = 1)]
impl GpuHolder {
    pub fn new() -> Self {
        GpuHolder
    }

    /// Its node and `CUDA_VISIBLE_DEVICES`.
    pub fn devices(&self) -> (String, String) {
        (
            photon::where_this_runs(),
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
        )
    }
}

fn gpu_bundles(n: usize) -> Vec<Bundle> {
    (0..n).map(|_| Bundle::new().cpus(1.0).gpus(1.0)).collect()
}

/// Waits for `group` to be created; the raylet address of each bundle.
fn created(group: &photon::PlacementGroup) -> Result<Vec<String>, Failed> {
    group.ready(Duration::from_secs(30))?;
    match group.state()? {
        PlacementGroupState::Created(addresses) => Ok(addresses),
        other => Err(format!("not created: {other:?}").into()),
    }
}

fn free_gpus(ctx: &Context, address: &str) -> f64 {
    ctx.cluster_nodes()
        .ok()
        .and_then(|nodes| nodes.into_iter().find(|n| n.address == address))
        // A resource with nothing free is left out of the map.
        .map_or(-1.0, |n| n.available.get("GPU").copied().unwrap_or(0.0))
}

pub fn strict_pack_reserves_gpus_on_one_node_or_says_why_it_waits() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let one_a = cluster.raylet(serde_json::json!({"GPU": 1}));
    let _one_b = cluster.raylet(serde_json::json!({"GPU": 1}));
    let ctx = cluster.driver(&one_a);
    // Two nodes of one GPU each: STRICT_PACK of two GPUs can never fit.
    let split = ctx.placement_group("split", gpu_bundles(2), PlacementStrategy::StrictPack)?;
    let waiting = split
        .ready(Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    check(
        waiting.contains("still pending")
            && waiting.contains("infeasible: STRICT_PACK needs")
            && waiting.contains("GPU: 2"),
        format!("a group no node can hold: {waiting}"),
    )?;
    // PACK spreads it over the two instead.
    let packed = ctx.placement_group("packed", gpu_bundles(2), PlacementStrategy::Pack)?;
    let mut addresses = created(&packed)?;
    addresses.sort();
    addresses.dedup();
    check(
        addresses.len() == 2,
        format!("PACK over two nodes: {addresses:?}"),
    )?;
    packed.remove()?;

    // A node with two GPUs takes the STRICT_PACK group whole.
    let two = cluster.raylet(serde_json::json!({"GPU": 2}));
    let addresses = created(&split)?;
    check(
        addresses == [two.address.clone(), two.address.clone()],
        format!(
            "both bundles on the two-GPU node {}: {addresses:?}",
            two.address
        ),
    )?;
    check(
        wait_until(Duration::from_secs(5), || {
            free_gpus(&ctx, &two.address) == 0.0
        }),
        "the bundles hold the node's GPUs",
    )?;
    // An actor per bundle: each sees its own GPU of that node.
    let mut seen = Vec::new();
    for bundle in 0..2 {
        let holder = GpuHolderHandle::new_with(
            &ctx,
            GpuHolderHandle::options().placement_group(&split, bundle),
        )?;
        seen.push(ctx.get_timeout(&holder.devices(), Duration::from_secs(30))?);
    }
    check(
        seen.iter().all(|(node, _)| node.contains(&two.address)),
        format!("actors on the group's node: {seen:?}"),
    )?;
    let mut devices: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
    devices.sort_unstable();
    check(devices == ["0", "1"], format!("one GPU each: {devices:?}"))?;
    // A bundle the group does not have is refused at once.
    let third =
        GpuHolderHandle::new_with(&ctx, GpuHolderHandle::options().placement_group(&split, 5));
    check(
        matches!(&third, Err(Error::Config(m)) if m.contains("there is no bundle 5")),
        format!("a bundle the group lacks: {third:?}"),
    )?;
    Ok(())
}

pub fn strict_spread_puts_each_bundle_on_its_own_node() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let mut raylets: Vec<_> = (0..3)
        .map(|_| cluster.raylet(serde_json::json!({})))
        .collect();
    let ctx = cluster.driver(&raylets[0]);
    let bundles = (0..3).map(|_| Bundle::new().cpus(1.0)).collect();
    let group = ctx.placement_group("spread", bundles, PlacementStrategy::StrictSpread)?;
    let addresses = created(&group)?;
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    check(distinct.len() == 3, format!("three nodes: {addresses:?}"))?;
    // A task in each bundle runs on that bundle's node.
    for (bundle, address) in addresses.iter().enumerate() {
        let options = where_am_i::options().placement_group(&group, bundle as u32);
        let (node, _) = ctx.get_timeout(
            &where_am_i::remote_with(&ctx, options),
            Duration::from_secs(30),
        )?;
        check(
            node.contains(address.as_str()),
            format!("bundle {bundle} on {address}: ran on {node}"),
        )?;
    }
    // A fourth bundle has no node of its own.
    let bundles = (0..4).map(|_| Bundle::new().cpus(0.5)).collect();
    let four = ctx.placement_group("four", bundles, PlacementStrategy::StrictSpread)?;
    let why = four
        .ready(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    check(
        why.contains("needs 4 nodes, one per bundle, and 3 are live"),
        format!("four bundles on three nodes: {why}"),
    )?;
    four.remove()?;

    // A node dies: its bundle is placed again on a node the group does not
    // use yet; the other two stay where they are.
    let lost = addresses
        .iter()
        .position(|a| *a == raylets[2].address)
        .ok_or("a bundle on the third node")?;
    raylets[2].kill9();
    let fresh = cluster.raylet(serde_json::json!({}));
    let moved = wait_until(
        Duration::from_secs(30),
        || matches!(group.state(), Ok(PlacementGroupState::Created(now)) if now[lost] == fresh.address),
    );
    check(
        moved,
        format!(
            "bundle {lost} moved to {}: {:?}",
            fresh.address,
            group.state()?
        ),
    )?;
    if let PlacementGroupState::Created(now) = group.state()? {
        for (bundle, address) in now.iter().enumerate().filter(|(b, _)| *b != lost) {
            check(
                *address == addresses[bundle],
                format!("bundle {bundle} stayed on {}: {address}", addresses[bundle]),
            )?;
        }
    }
    Ok(())
}

pub fn removing_a_group_ends_what_runs_in_it_and_frees_its_resources() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let node = cluster.raylet(serde_json::json!({"GPU": 1}));
    let ctx = cluster.driver(&node);
    let group = ctx.placement_group(
        "doomed",
        vec![Bundle::new().cpus(1.0).gpus(1.0)],
        PlacementStrategy::StrictPack,
    )?;
    created(&group)?;
    let holder =
        GpuHolderHandle::new_with(&ctx, GpuHolderHandle::options().placement_group(&group, 0))?;
    ctx.get_timeout(&holder.devices(), Duration::from_secs(30))?;
    let options = TaskOptions::new()
        .num_cpus(1.0)
        .max_retries(0)
        .placement_group(&group, 0);
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("running");
    let running = linger::remote_with(&ctx, options, 600u64, marker.display().to_string());
    check(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "the task in the group started",
    )?;
    group.remove()?;
    let call = ctx.get_timeout(&holder.devices(), Duration::from_secs(30));
    check(
        matches!(&call, Err(Error::ActorDied { .. })),
        format!("the actor in the removed group: {call:?}"),
    )?;
    let task = ctx.get_timeout(&running, Duration::from_secs(30));
    check(
        matches!(
            task,
            Err(Error::WorkerKilled { .. } | Error::Unschedulable { .. })
        ),
        format!("the task in the removed group: {task:?}"),
    )?;
    check(
        wait_until(Duration::from_secs(10), || {
            free_gpus(&ctx, &node.address) == 1.0
        }),
        format!("the GPU is free again: {}", free_gpus(&ctx, &node.address)),
    )?;
    check(
        matches!(group.state()?, PlacementGroupState::Removed(_)),
        "removed",
    )?;
    // Nothing new runs in it.
    let late = linger::remote_with(
        &ctx,
        TaskOptions::new().placement_group(&group, 0),
        1u64,
        dir.path().join("late").display().to_string(),
    );
    let late = ctx.get_timeout(&late, Duration::from_secs(30));
    check(
        matches!(&late, Err(Error::Unschedulable { why, .. }) if why.contains("was removed")),
        format!("a task for a removed group: {late:?}"),
    )?;
    let actor = GpuHolderHandle::new_with(&ctx, ActorOptions::new().placement_group(&group, 0));
    check(
        matches!(&actor, Err(Error::Config(m)) if m.contains("was removed")),
        format!("an actor for a removed group: {actor:?}"),
    )?;
    Ok(())
}

/// A group lasts as long as its job: when the driver that made it ends, the
/// head removes it and its node gets the resources back.
pub fn a_group_ends_with_its_job() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let node = cluster.raylet(serde_json::json!({"GPU": 1}));
    let watcher = cluster.driver(&node);
    let ctx = cluster.driver(&node);
    let group = ctx.placement_group(
        "of-a-job",
        vec![Bundle::new().cpus(0.5).gpus(1.0)],
        PlacementStrategy::StrictPack,
    )?;
    created(&group)?;
    check(
        wait_until(Duration::from_secs(10), || {
            free_gpus(&watcher, &node.address) == 0.0
        }),
        "the group holds the GPU",
    )?;
    // Its driver ends: the job with it.
    drop(group);
    drop(ctx);
    check(
        wait_until(Duration::from_secs(30), || {
            free_gpus(&watcher, &node.address) == 1.0
        }),
        format!(
            "the GPU is free once the job ended: {}",
            free_gpus(&watcher, &node.address)
        ),
    )?;
    Ok(())
}
