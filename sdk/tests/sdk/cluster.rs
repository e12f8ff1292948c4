//! The SDK on a loopback cluster of raylet processes.

use std::time::Duration;

use libtest_mimic::Failed;
use photon::testing::LoopbackCluster;
use photon::{Error, ObjectRef};

use crate::functions::*;
use crate::{check, wait_until};

pub fn three_raylets() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let first = cluster.raylet(serde_json::json!({}));
    let second = cluster.raylet(serde_json::json!({"stage_b": 1}));
    let third = cluster.raylet(serde_json::json!({"stage_b": 1}));
    let ctx = cluster.driver(&first);
    // Plain tasks run (spread over nodes once the first is busy).
    let squares: Vec<ObjectRef<u64>> = (0..50u64).map(|i| square::remote(&ctx, i)).collect();
    check(
        ctx.get_all(&squares)?.iter().sum::<u64>() == (0..50u64).map(|i| i * i).sum::<u64>(),
        "sum",
    )?;
    // A task needing a resource only other nodes have is spilled back there.
    let node =
        node_of_worker::remote_with(&ctx, node_of_worker::options().resource("stage_b", 1.0));
    let node = ctx.get(&node)?;
    check(
        node == second.node_id || node == third.node_id,
        format!("ran on {node}"),
    )?;
    // Objects move between nodes: a large result made on another node is read here.
    let seeded = bump::remote(&ctx, vec![1u8; 300_000]);
    let bumped = ctx.get(&seeded)?;
    check(
        bumped.len() == 300_000 && bumped.iter().all(|&b| b == 2),
        "remote large result",
    )?;
    // Actors are placed on other nodes too.
    let counter = CounterHandle::new_with(
        &ctx,
        CounterHandle::options().resource("stage_b", 1.0),
        1u64,
    )?;
    check(ctx.get(&counter.incr(1u64))? == 2, "remote actor")?;
    Ok(())
}

/// Spillback follows the hybrid policy: tasks that do not fit on the full
/// local node pack onto the first node (in registration order) that is less
/// than half used, rather than spreading over every free node.
pub fn spilled_tasks_pack_onto_the_first_node_under_half_used() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let first = cluster.raylet(serde_json::json!({}));
    let second = cluster.raylet(serde_json::json!({}));
    let third = cluster.raylet(serde_json::json!({}));
    let ctx = cluster.driver(&first);
    // Six half-CPU tasks on 2-CPU nodes: four fill the first node, and the two
    // spilled ones take a quarter each of the second, which stays under half.
    // (A slow worker start can let a fifth run on the first node once a task
    // there ends; none may go to the third.)
    let nodes: Vec<ObjectRef<String>> = (0..6)
        .map(|_| node_after_ms::remote_with(&ctx, node_after_ms::options().num_cpus(0.5), 2_000u64))
        .collect();
    let nodes = ctx.get_all(&nodes)?;
    let on =
        |raylet: &photon::testing::Raylet| nodes.iter().filter(|n| **n == raylet.node_id).count();
    let counts = (on(&first), on(&second), on(&third));
    check(
        counts.1 >= 1 && counts.2 == 0 && counts.0 + counts.1 == 6,
        format!("tasks per node (first, second, third): {counts:?}"),
    )?;
    Ok(())
}

pub fn lost_put_objects_say_so() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let mut first = cluster.raylet(serde_json::json!({}));
    let second = cluster.raylet(serde_json::json!({}));
    let ctx = cluster.driver(&first);
    let put = ctx.put(&vec![5u8; 500_000])?;
    check(
        ctx.get(&put)?.len() == 500_000,
        "readable while its node lives",
    )?;
    first.kill9();
    match ctx.get(&put) {
        Err(Error::ObjectLost { object, cause }) => {
            check(object == put.id(), "names the object")?;
            check(cause.contains("made by put"), cause.clone())?;
            check(cause.contains(&first.address), cause)?;
        }
        other => return Err(format!("expected ObjectLost, got {other:?}").into()),
    }
    drop(second);
    Ok(())
}

pub fn lineage_rebuilds_lost_objects() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let first = cluster.raylet(serde_json::json!({"stage_a": 1}));
    let mut second = cluster.raylet(serde_json::json!({"stage_b": 1}));
    let ctx = cluster.driver(&first);
    let a = seed::remote(&ctx, 400_000u64);
    let b = bump::remote(&ctx, &a);
    let c = bump::remote(&ctx, &b);
    ctx.wait(std::slice::from_ref(&c), 1, Some(Duration::from_secs(60)));
    // Heartbeats (every 500 ms) carry store use to the head.
    let stored = wait_until(Duration::from_secs(5), || {
        ctx.object_store_used()
            .is_ok_and(|used| used >= 3 * 400_000)
    });
    check(
        stored,
        format!("three objects stored: {}", ctx.object_store_used()?),
    )?;
    // b and c live only on the second node; a put on the second node is lost too.
    let put_there = ctx.put(&vec![9u8; 300_000])?;
    drop(b);
    let _third = cluster.raylet(serde_json::json!({"stage_b": 1}));
    second.kill9();
    // c is rebuilt on the third node: b first (from a, still on the first node).
    let value = ctx.get(&c)?;
    let expected: Vec<u8> = (0..400_000u64).map(|i| (i % 200) as u8 + 2).collect();
    check(value == expected, "rebuilt value is correct")?;
    let _ = put_there; // made on the driver's node: still there
    // Lineage is freed with the objects.
    let (local, head) = ctx.lineage_records()?;
    // b is no longer referenced, but c's lineage needs it.
    check(
        local == 3 && head == 3,
        format!("while referenced: {local} local, {head} at the head"),
    )?;
    drop((a, c));
    let (local, head) = ctx.lineage_records()?;
    check(
        local == 0 && head == 0,
        format!("after freeing: {local} local, {head} at the head"),
    )?;
    Ok(())
}
