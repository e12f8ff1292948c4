//! The SDK end to end: remote functions, objects, actors, failures and
//! lineage reconstruction, on an embedded cluster and on a loopback cluster
//! of raylet processes. Workers are this test binary started in worker mode,
//! so `main` routes first (no libtest harness; libtest-mimic lists and runs
//! the tests, which nextest understands).

mod borrows;
mod cancel;
mod cluster;
mod functions;
mod nested;
mod owners;
mod placement;
mod returns;

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use photon::{Config, Context, Error, ObjectRef};

use functions::*;

pub(crate) fn embedded() -> Context {
    photon::init(Config {
        num_cpus: Some(2.0),
        ..Config::default()
    })
    .expect("embedded cluster starts")
}

pub(crate) fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

fn tasks_fan_out_and_in() -> Result<(), Failed> {
    let ctx = embedded();
    let squares: Vec<ObjectRef<u64>> = (0..200u64).map(|i| square::remote(&ctx, i)).collect();
    let total: u64 = ctx.get_all(&squares)?.into_iter().sum();
    check(
        total == (0..200u64).map(|i| i * i).sum::<u64>(),
        format!("sum {total}"),
    )?;
    // ObjectRefs as arguments: a chain and a fan-in.
    let one = add::remote(&ctx, 1u64, 0u64);
    let two = add::remote(&ctx, &one, 1u64);
    let four = add::remote(&ctx, two.clone(), &two);
    check(ctx.get(&four)? == 4, "chain")?;
    let summed = sum_all::remote(&ctx, vec![1u64, 2, 3]);
    check(ctx.get(&summed)? == 6, "vec argument")?;
    let greeting = async_greet::remote(&ctx, "photon".to_string());
    check(ctx.get(&greeting)? == "hello, photon", "async function")?;
    Ok(())
}

fn objects_inline_and_stored() -> Result<(), Failed> {
    let ctx = embedded();
    let small = ctx.put(&"tiny".to_string())?;
    check(ctx.get(&small)? == "tiny", "small put")?;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let stored = ctx.put(&big)?;
    check(ctx.get(&stored)? == big, "large put round trip")?;
    // A stored object as an argument, read by the worker from shared memory.
    let checksum = checksum::remote(&ctx, &stored);
    let expected: u64 = big.iter().map(|&b| u64::from(b)).sum();
    check(
        ctx.get(&checksum)? == expected,
        "checksum of a stored argument",
    )?;
    // A large result goes through the store.
    let made = make_bytes::remote(&ctx, 1_000_000u64, 7u8);
    let bytes = ctx.get(&made)?;
    check(
        bytes.len() == 1_000_000 && bytes.iter().all(|&b| b == 7),
        "large result",
    )?;
    Ok(())
}

fn record_batches_travel_zero_copy() -> Result<(), Failed> {
    use std::sync::Arc;

    use photon::arrow::array::{Int64Array, RecordBatch, StringArray};

    let ctx = embedded();
    let ids: Int64Array = (0..200_000i64).collect();
    let texts: StringArray = (0..200_000).map(|i| Some(format!("row {i}"))).collect();
    let batch =
        RecordBatch::try_from_iter([("id", Arc::new(ids) as _), ("text", Arc::new(texts) as _)])?;
    let stored = ctx.put_batch(&batch)?;
    let back = ctx.get_batch(&stored)?;
    check(back == batch, "round trip")?;
    check(
        in_shared_memory(back.column(0).as_ref()),
        "read in place from shared memory",
    )?;
    check(
        ctx.get(&count_rows::remote(&ctx, &stored))? == 200_000,
        "rows seen by a task",
    )?;
    let doubled = ctx.get_batch(&double_ids::remote(&ctx, &stored))?;
    let column = doubled
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    check(column.value(199_999) == 399_998, "a batch result")?;
    check(doubled.column(1) == batch.column(1), "other column carried")?;
    // Small batches travel inline.
    let small = ctx.put_batch(&batch.slice(10, 5))?;
    check(ctx.get_batch(&small)? == batch.slice(10, 5), "inline batch")?;
    Ok(())
}

fn freed_objects_leave_the_store() -> Result<(), Failed> {
    let ctx = embedded();
    let baseline = ctx.object_store_used()?;
    let made: Vec<ObjectRef<Vec<u8>>> = (0..8u8)
        .map(|i| make_bytes::remote(&ctx, 2_000_000u64, i))
        .collect();
    for object in &made {
        ctx.get(object)?;
    }
    let stored = ctx.object_store_used()?;
    check(
        stored >= baseline + 16_000_000,
        format!("store holds the results: {baseline} -> {stored}"),
    )?;
    drop(made);
    let freed = wait_until(Duration::from_secs(5), || {
        ctx.object_store_used().is_ok_and(|used| used == baseline)
    });
    check(
        freed,
        format!("store back to {baseline}, is {}", ctx.object_store_used()?),
    )?;
    check(ctx.object_count() == 0, "no objects referenced")?;
    let (local, _) = ctx.lineage_records()?;
    check(local == 0, format!("lineage freed, {local} left"))?;
    Ok(())
}

fn errors_are_typed() -> Result<(), Failed> {
    let ctx = embedded();
    match ctx.get(&panics::remote(&ctx, "boom".to_string())) {
        Err(Error::TaskFailed {
            message,
            panicked: true,
            function,
            ..
        }) => {
            check(message.contains("boom"), message.clone())?;
            check(function.ends_with("functions::panics"), function)?;
        }
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    match ctx.get(&fails::remote(&ctx, 3u32)) {
        Err(Error::TaskFailed {
            message,
            panicked: false,
            ..
        }) => {
            check(message.contains("three is not allowed"), message)?;
        }
        other => return Err(format!("expected an error, got {other:?}").into()),
    }
    // The failure propagates to a task that takes the failed object.
    let dependent = add::remote(&ctx, fails::remote(&ctx, 3u32), 1u64);
    check(
        matches!(ctx.get(&dependent), Err(Error::TaskFailed { .. })),
        "propagated",
    )?;
    let impossible = square::remote_with(&ctx, square::options().resource("nowhere", 1.0), 2u64);
    match ctx.get(&impossible) {
        Err(Error::Unschedulable { why, .. }) => check(why.contains("nowhere"), why)?,
        other => return Err(format!("expected Unschedulable, got {other:?}").into()),
    }
    Ok(())
}

fn dead_workers_are_retried_or_reported() -> Result<(), Failed> {
    let ctx = embedded();
    let marker = tempfile::tempdir()?;
    let path = marker.path().join("died-once").display().to_string();
    // Dies the first time (exit 3), succeeds when retried.
    let survived = exit_once::remote(&ctx, path.clone());
    check(ctx.get(&survived)? == "second try", "retried")?;
    let path = marker.path().join("no-retry").display().to_string();
    let killed = exit_once::remote_with(&ctx, exit_once::options().max_retries(0), path);
    match ctx.get(&killed) {
        Err(Error::WorkerKilled { reason, .. }) => {
            check(
                reason.to_string().contains("exited with code 3"),
                reason.to_string(),
            )?;
        }
        other => return Err(format!("expected WorkerKilled, got {other:?}").into()),
    }
    Ok(())
}

fn memory_kills_reach_the_caller() -> Result<(), Failed> {
    let ctx = photon::init(Config {
        num_cpus: Some(2.0),
        worker_memory_limit: Some(200 << 20),
        ..Config::default()
    })?;
    let hog = hog::remote_with(&ctx, hog::options().max_retries(0), 400u64);
    match ctx.get(&hog) {
        Err(Error::WorkerKilled {
            reason: photon::KillReason::Oom(why),
            function,
        }) => {
            check(why.contains("killed for memory"), why.clone())?;
            check(function.ends_with("::hog"), function)?;
        }
        other => return Err(format!("expected WorkerKilled(Oom), got {other:?}").into()),
    }
    // The node stays up: the next task runs.
    check(
        ctx.get(&square::remote(&ctx, 3u64))? == 9,
        "cluster still works",
    )?;
    Ok(())
}

fn wait_returns_the_ready_ones() -> Result<(), Failed> {
    let ctx = embedded();
    let slow = sleep_ms::remote(&ctx, 30_000u64);
    let fast: Vec<_> = (0..3).map(|_| sleep_ms::remote(&ctx, 1u64)).collect();
    let mut all = vec![slow];
    all.extend(fast);
    // The fast ones first (a loaded machine may take seconds to start
    // their workers), then asking for all four times out with three.
    let (ready, _) = ctx.wait(&all, 3, Some(Duration::from_secs(30)));
    check(
        ready.len() == 3,
        format!("{} ready within 30 s", ready.len()),
    )?;
    let (ready, pending) = ctx.wait(&all, 4, Some(Duration::from_millis(300)));
    check(
        ready.len() == 3 && pending.len() == 1,
        format!("{} ready", ready.len()),
    )?;
    check(pending[0].id() == all[0].id(), "the slow one is pending")?;
    match ctx.get_timeout(&all[0], Duration::from_millis(100)) {
        Err(Error::Timeout(limit)) => check(limit == Duration::from_millis(100), "limit")?,
        other => return Err(format!("expected Timeout, got {other:?}").into()),
    }
    Ok(())
}

/// Tasks waiting for a CPU show up in the node's heartbeat as pending
/// demand with the reason, and leave it once they run.
fn pending_demand_is_reported() -> Result<(), Failed> {
    let ctx = photon::init(Config {
        num_cpus: Some(1.0),
        ..Config::default()
    })?;
    let tasks: Vec<_> = (0..3).map(|_| sleep_ms::remote(&ctx, 1_500u64)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let demand = loop {
        let nodes = ctx.cluster_nodes()?;
        if let Some(demand) = nodes.iter().flat_map(|n| &n.pending).next() {
            break demand.clone();
        }
        if std::time::Instant::now() > deadline {
            return Err("no pending demand reported within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    check(
        demand.count >= 1 && demand.resources.get("CPU") == Some(&1.0),
        format!("{demand:?}"),
    )?;
    check(
        demand
            .reason
            .contains("waiting for CPU: each needs 1, 0 free"),
        demand.reason.clone(),
    )?;
    check(ctx.get_all(&tasks)? == vec![1_500; 3], "all three ran")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while ctx.cluster_nodes()?.iter().any(|n| !n.pending.is_empty()) {
        if std::time::Instant::now() > deadline {
            return Err("demand still reported after the tasks ran".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn actors_keep_state_in_order() -> Result<(), Failed> {
    let ctx = embedded();
    let counter = CounterHandle::new(&ctx, 10u64)?;
    let results: Vec<ObjectRef<u64>> = (0..100).map(|_| counter.incr(1u64)).collect();
    let values = ctx.get_all(&results)?;
    check(
        values == (11..=110).collect::<Vec<u64>>(),
        "calls ran in order",
    )?;
    check(ctx.get(&counter.value())? == 110, "value")?;
    let named = CounterHandle::new_with(&ctx, CounterHandle::options().name("shared"), 5u64)?;
    let found = CounterHandle::lookup(&ctx, "shared")?;
    check(ctx.get(&found.incr(2u64))? == 7, "named lookup")?;
    check(ctx.get(&named.value())? == 7, "same actor")?;
    match CounterHandle::new_with(&ctx, CounterHandle::options().name("shared"), 1u64) {
        Err(Error::Config(message)) => check(message.contains("already exists"), message)?,
        other => return Err(format!("expected a name clash, got {other:?}").into()),
    }
    // A call may take an earlier call's result on the same actor.
    let current = counter.value();
    check(ctx.get(&counter.incr(&current))? == 220, "chained call")?;
    ctx.kill(counter.handle())?;
    match ctx.get(&counter.value()) {
        Err(Error::ActorDied { reason, .. }) => check(reason.contains("killed"), reason)?,
        other => return Err(format!("expected ActorDied, got {other:?}").into()),
    }
    Ok(())
}

fn actor_restarts_once_then_dies() -> Result<(), Failed> {
    let ctx = embedded();
    let counter = CounterHandle::new_with(&ctx, CounterHandle::options().max_restarts(1), 0u64)?;
    check(ctx.get(&counter.incr(5u64))? == 5, "first life")?;
    match ctx.get(&counter.crash()) {
        Err(Error::ActorDied { reason, .. }) => {
            check(reason.contains("exited with code 9"), reason)?
        }
        other => return Err(format!("expected ActorDied, got {other:?}").into()),
    }
    // Restarted: the constructor ran again.
    check(
        ctx.get(&counter.incr(1u64))? == 1,
        "second life starts fresh",
    )?;
    check(
        matches!(ctx.get(&counter.crash()), Err(Error::ActorDied { .. })),
        "second crash",
    )?;
    match ctx.get(&counter.incr(1u64)) {
        Err(Error::ActorDied { reason, .. }) => {
            check(reason.contains("exited with code 9"), reason)?
        }
        other => return Err(format!("expected ActorDied for good, got {other:?}").into()),
    }
    // An actor whose constructor fails is dead with the constructor's message.
    let broken = CounterHandle::broken(&ctx, "bad config".to_string())?;
    match ctx.get(&broken.value()) {
        Err(Error::ActorDied { reason, .. }) => check(reason.contains("bad config"), reason)?,
        other => return Err(format!("expected ActorDied, got {other:?}").into()),
    }
    Ok(())
}

fn concurrent_actor_calls() -> Result<(), Failed> {
    let ctx = embedded();
    let sleeper = SleeperHandle::new_with(&ctx, SleeperHandle::options().max_concurrency(4))?;
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..4).map(|_| sleeper.nap(300u64)).collect();
    ctx.get_all(&calls)?;
    let elapsed = started.elapsed();
    check(
        elapsed < Duration::from_millis(1100),
        format!("4 naps of 300 ms took {elapsed:?}"),
    )?;
    Ok(())
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Polls the progress of `object` until its value is in: the distinct
/// figures seen while it ran.
fn watch_progress(ctx: &Context, object: &ObjectRef<u64>) -> Vec<photon::CallProgress> {
    let mut seen: Vec<photon::CallProgress> = Vec::new();
    while ctx
        .wait(
            std::slice::from_ref(object),
            1,
            Some(Duration::from_millis(20)),
        )
        .0
        .is_empty()
    {
        if let Some(progress) = ctx.progress(object)
            && seen.last() != Some(&progress)
        {
            seen.push(progress);
        }
    }
    seen
}

fn running_calls_report_progress() -> Result<(), Failed> {
    let ctx = embedded();
    let task = count_slowly::remote(&ctx, 10u64, 150u64);
    let seen = watch_progress(&ctx, &task);
    check(ctx.get(&task)? == 10, "the task's value")?;
    check(
        seen.len() >= 3
            && seen
                .iter()
                .all(|p| p.total == 10 && (1..=10).contains(&p.done)),
        format!("a task's progress while it ran: {seen:?}"),
    )?;
    check(
        seen.windows(2).all(|w| w[0].done < w[1].done),
        format!("progress only grows: {seen:?}"),
    )?;
    check(
        ctx.progress(&task).is_none(),
        "no progress once the value is in",
    )?;

    let actor = SleeperHandle::new(&ctx)?;
    let call = actor.count_slowly(8u64, 150u64);
    let seen = watch_progress(&ctx, &call);
    check(ctx.get(&call)? == 8, "the call's value")?;
    check(
        seen.len() >= 3 && seen.iter().all(|p| p.total == 8),
        format!("an actor call's progress while it ran: {seen:?}"),
    )?;
    Ok(())
}

/// Set for a child that calls `photon::init` in a worker process without
/// going through `worker_entry` (a `main` without `#[photon::main]`).
const INIT_IN_WORKER_ENV: &str = "PHOTON_TEST_INIT_IN_WORKER";

/// A worker process whose `main` calls `init` is refused at once, with the
/// fix named, instead of starting a cluster whose workers do the same.
fn init_in_a_worker_process_is_refused() -> Result<(), Failed> {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(std::env::current_exe()?)
        .env(INIT_IN_WORKER_ENV, "1")
        .env("PHOTON_WORKER", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    check(
        output.status.code() == Some(3),
        format!("exit {:?}: {stderr}", output.status),
    )?;
    check(
        stderr.contains("started by a raylet as a Photon worker")
            && stderr.contains("#[photon::main]"),
        format!("stderr: {stderr}"),
    )?;
    check(
        started.elapsed() < Duration::from_secs(10),
        format!("took {:?}", started.elapsed()),
    )
}

fn main() {
    if std::env::var_os(INIT_IN_WORKER_ENV).is_some() {
        match photon::init(Config::default()) {
            Ok(_) => std::process::exit(0),
            Err(err) => {
                eprintln!("{err}");
                std::process::exit(3);
            }
        }
    }
    photon::worker_entry();
    photon::testing::raylet_entry();
    owners::driver_entry();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test("embedded::tasks_fan_out_and_in", tasks_fan_out_and_in),
        Trial::test(
            "init_in_a_worker_process_is_refused",
            init_in_a_worker_process_is_refused,
        ),
        Trial::test(
            "embedded::running_calls_report_progress",
            running_calls_report_progress,
        ),
        Trial::test(
            "embedded::objects_inline_and_stored",
            objects_inline_and_stored,
        ),
        Trial::test(
            "embedded::record_batches_travel_zero_copy",
            record_batches_travel_zero_copy,
        ),
        Trial::test(
            "embedded::freed_objects_leave_the_store",
            freed_objects_leave_the_store,
        ),
        Trial::test("embedded::errors_are_typed", errors_are_typed),
        Trial::test(
            "embedded::dead_workers_are_retried_or_reported",
            dead_workers_are_retried_or_reported,
        ),
        Trial::test(
            "embedded::memory_kills_reach_the_caller",
            memory_kills_reach_the_caller,
        ),
        Trial::test(
            "embedded::wait_returns_the_ready_ones",
            wait_returns_the_ready_ones,
        ),
        Trial::test(
            "embedded::actors_keep_state_in_order",
            actors_keep_state_in_order,
        ),
        Trial::test(
            "embedded::actor_restarts_once_then_dies",
            actor_restarts_once_then_dies,
        ),
        Trial::test("embedded::concurrent_actor_calls", concurrent_actor_calls),
        Trial::test(
            "embedded::pending_demand_is_reported",
            pending_demand_is_reported,
        ),
        Trial::test(
            "cancel::pending_tasks_never_run",
            cancel::pending_tasks_never_run,
        ),
        Trial::test(
            "cancel::running_tasks_are_interrupted",
            cancel::running_tasks_are_interrupted,
        ),
        Trial::test(
            "cancel::finished_tasks_keep_their_value",
            cancel::finished_tasks_keep_their_value,
        ),
        Trial::test(
            "cancel::actor_calls_not_started_never_run",
            cancel::actor_calls_not_started_never_run,
        ),
        Trial::test(
            "nested::a_task_fans_out_nested_tasks",
            nested::a_task_fans_out_nested_tasks,
        ),
        Trial::test(
            "nested::nested_objects_are_owned_and_freed_by_their_worker",
            nested::nested_objects_are_owned_and_freed_by_their_worker,
        ),
        Trial::test(
            "nested::waiting_tasks_lend_their_cpus",
            nested::waiting_tasks_lend_their_cpus,
        ),
        Trial::test(
            "nested::what_a_dead_owner_owned_ends_with_it",
            nested::what_a_dead_owner_owned_ends_with_it,
        ),
        Trial::test(
            "nested::an_actor_creates_sub_actors",
            nested::an_actor_creates_sub_actors,
        ),
        Trial::test(
            "nested::a_lost_nested_result_is_rebuilt_by_its_owner",
            nested::a_lost_nested_result_is_rebuilt_by_its_owner,
        ),
        Trial::test("cluster::three_raylets", cluster::three_raylets),
        Trial::test(
            "cluster::killed_drivers_leave_nothing_behind",
            owners::killed_drivers_leave_nothing_behind,
        ),
        Trial::test(
            "cluster::a_detached_actor_outlives_its_killed_driver",
            owners::a_detached_actor_outlives_its_killed_driver,
        ),
        Trial::test(
            "cluster::spilled_tasks_pack_onto_the_first_node_under_half_used",
            cluster::spilled_tasks_pack_onto_the_first_node_under_half_used,
        ),
        Trial::test(
            "cluster::lineage_rebuilds_lost_objects",
            cluster::lineage_rebuilds_lost_objects,
        ),
        Trial::test(
            "cluster::lost_put_objects_say_so",
            cluster::lost_put_objects_say_so,
        ),
        Trial::test(
            "embedded::each_return_is_its_own_object",
            returns::each_return_is_its_own_object,
        ),
        Trial::test(
            "embedded::failures_names_and_cancels_reach_every_return",
            returns::failures_names_and_cancels_reach_every_return,
        ),
        Trial::test(
            "embedded::actor_methods_take_returns_and_retries",
            returns::actor_methods_take_returns_and_retries,
        ),
        Trial::test(
            "cluster::a_lost_return_is_rebuilt_from_lineage",
            returns::a_lost_return_is_rebuilt_from_lineage,
        ),
        Trial::test(
            "cluster::strict_pack_reserves_gpus_on_one_node_or_says_why_it_waits",
            placement::strict_pack_reserves_gpus_on_one_node_or_says_why_it_waits,
        ),
        Trial::test(
            "cluster::strict_spread_puts_each_bundle_on_its_own_node",
            placement::strict_spread_puts_each_bundle_on_its_own_node,
        ),
        Trial::test(
            "cluster::removing_a_group_ends_what_runs_in_it_and_frees_its_resources",
            placement::removing_a_group_ends_what_runs_in_it_and_frees_its_resources,
        ),
        Trial::test(
            "cluster::a_group_ends_with_its_job",
            placement::a_group_ends_with_its_job,
        ),
        Trial::test(
            "embedded::an_object_inside_a_struct_lives_until_its_last_borrower_drops_it",
            borrows::an_object_inside_a_struct_lives_until_its_last_borrower_drops_it,
        ),
        Trial::test(
            "embedded::an_object_returned_inside_a_value_lives_until_nothing_holds_it",
            borrows::an_object_returned_inside_a_value_lives_until_nothing_holds_it,
        ),
        Trial::test(
            "embedded::references_to_references_and_to_the_same_actors_results",
            borrows::references_to_references_and_to_the_same_actors_results,
        ),
        Trial::test(
            "embedded::small_and_pending_objects_inside_values_are_lent",
            borrows::small_and_pending_objects_inside_values_are_lent,
        ),
        Trial::test(
            "embedded::actor_handles_travel_inside_values",
            borrows::actor_handles_travel_inside_values,
        ),
        Trial::test(
            "embedded::a_borrower_whose_owner_ended_reads_owner_died",
            borrows::a_borrower_whose_owner_ended_reads_owner_died,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
