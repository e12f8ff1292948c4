//! Nested work: tasks and actors that submit tasks, create actors and put
//! objects from inside a worker, which owns what it creates.

use std::sync::Mutex;
use std::time::Duration;

use libtest_mimic::Failed;
use photon::testing::LoopbackCluster;
use photon::{Context, Error, ObjectRef};

use crate::functions::*;
use crate::{check, embedded, wait_until};

/// What a fan-out saw from inside its worker.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct FanOut {
    pub sum: u64,
    /// Objects the worker referenced while its nested results were held.
    pub held: usize,
    /// Objects it referenced after dropping them.
    pub left: usize,
}

/// Submits `n` nested tasks from inside a task and sums their results.
#[photon::remote]
pub fn fan_out(n: u64) -> Result<FanOut, String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    let squares: Vec<ObjectRef<u64>> = (0..n).map(|i| square::remote(&ctx, i)).collect();
    let sum = ctx
        .get_all(&squares)
        .map_err(|e| e.to_string())?
        .into_iter()
        .sum();
    let held = ctx.object_count();
    drop(squares);
    Ok(FanOut {
        sum,
        held,
        left: ctx.object_count(),
    })
}

/// Puts a large value from inside a task, passes it to a nested task, and
/// makes large nested results; returns the checksum and the result bytes.
#[photon::remote]
pub async fn nested_objects(len: u64) -> Result<(u64, u64), String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let stored = ctx.put_async(&bytes).await.map_err(|e| e.to_string())?;
    let sum = ctx
        .get_async(&checksum::remote(&ctx, &stored))
        .await
        .map_err(|e| e.to_string())?;
    let mut made = 0;
    for value in 0..3u8 {
        let result = ctx
            .get_async(&make_bytes::remote(&ctx, len, value))
            .await
            .map_err(|e| e.to_string())?;
        made += result.len() as u64;
    }
    Ok((sum, made))
}

pub fn a_task_fans_out_nested_tasks() -> Result<(), Failed> {
    let ctx = embedded();
    let seen = ctx.get(&fan_out::remote(&ctx, 100u64))?;
    check(
        seen.sum == (0..100u64).map(|i| i * i).sum::<u64>(),
        format!("sum of 100 nested tasks: {seen:?}"),
    )?;
    check(
        seen.held == 100 && seen.left == 0,
        format!("the worker owned the 100 results, then freed them: {seen:?}"),
    )?;
    // The driver owns only its own task's result.
    check(
        ctx.object_count() == 0,
        "the driver holds nothing after get",
    )?;
    Ok(())
}

/// More tasks than CPUs, each waiting on nested tasks: a waiting task lends
/// its CPU, so the nested ones run instead of queueing behind their parents.
pub fn waiting_tasks_lend_their_cpus() -> Result<(), Failed> {
    let ctx = embedded(); // 2 CPUs
    let parents: Vec<ObjectRef<FanOut>> = (0..4).map(|_| fan_out::remote(&ctx, 20u64)).collect();
    for parent in &parents {
        let seen = ctx.get_timeout(parent, Duration::from_secs(60))?;
        check(
            seen.sum == (0..20u64).map(|i| i * i).sum::<u64>(),
            format!("a parent's sum: {seen:?}"),
        )?;
    }
    Ok(())
}

pub fn nested_objects_are_owned_and_freed_by_their_worker() -> Result<(), Failed> {
    let ctx = embedded();
    let baseline = ctx.object_store_used()?;
    let len = 1_500_000u64;
    let (sum, made) = ctx.get(&nested_objects::remote(&ctx, len))?;
    let expected: u64 = (0..len).map(|i| i % 251).sum();
    check(sum == expected, format!("checksum of a nested put: {sum}"))?;
    check(
        made == 3 * len,
        format!("nested large results: {made} bytes"),
    )?;
    // The worker dropped its refs: the put and the three results leave the
    // store (heartbeats carry its use every 500 ms).
    let freed = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used().is_ok_and(|used| used <= baseline)
    });
    check(
        freed,
        format!(
            "store use back to {baseline} bytes: {}",
            ctx.object_store_used()?
        ),
    )?;
    Ok(())
}

/// An actor that creates actors of its own and calls them.
pub struct Supervisor {
    counters: Vec<CounterHandle>,
}

#[photon::actor]
impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            counters: Vec::new(),
        }
    }

    /// Starts `n` counters (from `start`, `start + 1`, ...) and returns
    /// their ids.
    pub fn hire(&mut self, n: u64, start: u64) -> Result<Vec<String>, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        for i in 0..n {
            let counter =
                CounterHandle::new_with(&ctx, CounterHandle::options().num_cpus(0.0), start + i)
                    .map_err(|e| e.to_string())?;
            self.counters.push(counter);
        }
        Ok(self
            .counters
            .iter()
            .map(|c| c.handle().id().to_string())
            .collect())
    }

    /// Adds `by` to every counter and returns their values.
    pub fn bump_all(&self, by: u64) -> Result<Vec<u64>, String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let calls: Vec<ObjectRef<u64>> = self.counters.iter().map(|c| c.incr(by)).collect();
        ctx.get_all(&calls).map_err(|e| e.to_string())
    }
}

pub fn an_actor_creates_sub_actors() -> Result<(), Failed> {
    let ctx = embedded();
    let supervisor = SupervisorHandle::new_with(&ctx, SupervisorHandle::options().num_cpus(0.0))?;
    let ids = ctx.get(&supervisor.hire(3u64, 10u64))?;
    check(ids.len() == 3, format!("three sub-actors: {ids:?}"))?;
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    check(distinct.len() == 3, format!("distinct actor ids: {ids:?}"))?;
    check(
        ctx.get(&supervisor.bump_all(5u64))? == vec![15, 16, 17],
        "sub-actors keep their state",
    )?;
    check(
        ctx.get(&supervisor.bump_all(1u64))? == vec![16, 17, 18],
        "and keep it across calls",
    )?;
    Ok(())
}

/// `seed` on any node.
#[photon::remote]
pub fn seed_anywhere(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 200) as u8).collect()
}

/// Owns a nested result made on a `stage_b` node and reads it on demand.
pub struct Keeper {
    kept: Mutex<Option<ObjectRef<Vec<u8>>>>,
}

#[photon::actor(resources(stage_a = 1))]
impl Keeper {
    pub fn new() -> Self {
        Keeper {
            kept: Mutex::new(None),
        }
    }

    /// Makes `len` bytes on a `stage_b` node (seed, then bump there) and keeps
    /// the reference; returns once the value exists.
    pub fn make(&self, len: u64) -> Result<(), String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let seeded = seed_anywhere::remote(&ctx, len);
        let bumped = bump::remote(&ctx, &seeded);
        let (ready, _) = ctx.wait(std::slice::from_ref(&bumped), 1, None);
        if ready.is_empty() {
            return Err("the nested task never finished".into());
        }
        *self.kept.lock().unwrap() = Some(bumped);
        Ok(())
    }

    /// The kept value's bytes summed, and its length.
    pub fn read(&self) -> Result<(u64, u64), String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let kept = self.kept.lock().unwrap().clone().ok_or("nothing kept")?;
        let bytes = ctx.get(&kept).map_err(|e| e.to_string())?;
        Ok((
            bytes.iter().map(|&b| u64::from(b)).sum(),
            bytes.len() as u64,
        ))
    }
}

pub fn a_lost_nested_result_is_rebuilt_by_its_owner() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let first = cluster.raylet(serde_json::json!({"stage_a": 1}));
    let mut second = cluster.raylet(serde_json::json!({"stage_b": 1}));
    let ctx = cluster.driver(&first);
    let keeper = KeeperHandle::new(&ctx)?;
    let len = 400_000u64;
    ctx.get(&keeper.make(len))?;
    // The bumped value lives only on the second node; a third can rebuild it.
    let _third = cluster.raylet(serde_json::json!({"stage_b": 1}));
    second.kill9();
    let (sum, read) = ctx.get_timeout(&keeper.read(), Duration::from_secs(60))?;
    let expected: u64 = (0..len).map(|i| (i % 200) + 1).sum();
    check(
        read == len && sum == expected,
        format!("the rebuilt value: {read} bytes summing to {sum}"),
    )?;
    Ok(())
}

/// Owns objects, a sub-actor and a long nested task until its worker dies.
pub struct Hoarder {
    kept: Vec<ObjectRef<Vec<u8>>>,
    sub: Option<CounterHandle>,
    running: Option<ObjectRef<u64>>,
}

#[photon::actor]
impl Hoarder {
    pub fn new() -> Self {
        Hoarder {
            kept: Vec::new(),
            sub: None,
            running: None,
        }
    }

    /// Puts `len` bytes, makes `len` more with a nested task, starts a
    /// named sub-actor and a nested task holding a CPU for a minute.
    pub fn hoard(&mut self, len: u64, sub_name: String) -> Result<(), String> {
        let ctx = Context::current().map_err(|e| e.to_string())?;
        let put = ctx
            .put(&vec![3u8; len as usize])
            .map_err(|e| e.to_string())?;
        let made = make_bytes::remote(&ctx, len, 4u8);
        ctx.wait(std::slice::from_ref(&made), 1, None);
        self.kept = vec![put, made];
        let sub = CounterHandle::new_with(
            &ctx,
            CounterHandle::options().num_cpus(0.0).name(&sub_name),
            0u64,
        )
        .map_err(|e| e.to_string())?;
        ctx.get(&sub.incr(1u64)).map_err(|e| e.to_string())?;
        self.sub = Some(sub);
        self.running = Some(sleep_ms::remote(&ctx, 60_000u64));
        Ok(())
    }
}

/// An owner's death ends what it owned: its objects leave every store, its
/// lineage leaves the head, its sub-actors die and the workers running its
/// tasks are stopped (their CPUs come back).
pub fn what_a_dead_owner_owned_ends_with_it() -> Result<(), Failed> {
    let ctx = embedded(); // 2 CPUs
    let baseline = ctx.object_store_used()?;
    let hoarder = HoarderHandle::new_with(&ctx, HoarderHandle::options().num_cpus(0.0))?;
    let len = 1_500_000u64;
    ctx.get(&hoarder.hoard(len, "hoarded-counter".to_string()))?;
    let sub = CounterHandle::lookup(&ctx, "hoarded-counter")?;
    check(ctx.get(&sub.value())? == 1, "the sub-actor is up")?;
    let stored = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used()
            .is_ok_and(|used| used >= baseline + 2 * len)
    });
    check(stored, "the owner's objects are in the store")?;
    let lineage = wait_until(Duration::from_secs(10), || {
        ctx.lineage_records().is_ok_and(|(_, head)| head >= 1)
    });
    check(lineage, "the nested task's lineage reached the head")?;
    // Its minute-long nested task holds one of the two CPUs now.
    ctx.kill(hoarder.handle())?;
    let freed = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used().is_ok_and(|used| used <= baseline)
    });
    check(
        freed,
        format!("store use back to {baseline}: {}", ctx.object_store_used()?),
    )?;
    check(
        wait_until(Duration::from_secs(10), || {
            ctx.lineage_records().is_ok_and(|(_, head)| head == 0)
        }),
        format!("lineage left the head: {:?}", ctx.lineage_records()?),
    )?;
    match ctx.get_timeout(&sub.value(), Duration::from_secs(10)) {
        Err(Error::ActorDied { reason, .. }) => {
            check(
                reason.contains("owner"),
                format!("the sub-actor's death: {reason}"),
            )?;
        }
        other => return Err(format!("expected the sub-actor dead, got {other:?}").into()),
    }
    // Both CPUs are free again: the nested task's worker was stopped.
    let whole = square::remote_with(&ctx, square::options().num_cpus(2.0), 6u64);
    check(
        ctx.get_timeout(&whole, Duration::from_secs(10))? == 36,
        "a two-CPU task runs",
    )?;
    Ok(())
}
