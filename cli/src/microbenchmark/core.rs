//! `photon microbenchmark core`: the SDK's task, actor and object paths
//! through the real processes (this driver → the raylet → worker processes,
//! which are this `photon` binary in worker mode) on an embedded local
//! cluster. Each figure is printed with its goal (issue 5), which was set
//! against a Python peer measured on this machine; the 100 MiB put is
//! printed next to a memcpy measured in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use photon::{Config, Context, ObjectRef};
use serde_bytes::ByteBuf;

use super::{Report, median};

/// A task that does nothing: the figure is the framework's cost.
#[photon::remote]
fn noop() -> u64 {
    0
}

/// Tasks one task fans out in the nested figure.
const NESTED: usize = 1_000;

/// Submits `n` nested `noop` tasks from inside a task and waits for them all.
#[photon::remote]
fn fan_out_noops(n: u64) -> Result<u64, String> {
    let ctx = Context::current().map_err(|e| e.to_string())?;
    let refs: Vec<ObjectRef<u64>> = (0..n).map(|_| noop::remote(&ctx)).collect();
    Ok(ctx.get_all(&refs).map_err(|e| e.to_string())?.len() as u64)
}

/// An actor that does nothing.
pub struct Echo;

#[photon::actor]
impl Echo {
    /// Constructor.
    pub fn new() -> Self {
        Echo
    }

    /// Answers at once.
    pub fn ping(&self) -> u64 {
        0
    }
}

/// Calls per loop of the throughput figures.
const BATCH: usize = 10_000;
/// How long each sync loop runs.
const SYNC_LOOP: Duration = Duration::from_secs(1);

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Runs `call` repeatedly for `SYNC_LOOP`; returns calls per second.
fn sync_rate(mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < SYNC_LOOP {
        call()?;
        count += 1;
    }
    Ok(per_second(count, started.elapsed()))
}

/// Median of three runs of `batch` (which makes `BATCH` calls); calls per second.
fn batch_rate(mut batch: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        batch()?;
        rates.push(per_second(BATCH, started.elapsed()));
    }
    Ok(median(rates))
}

fn goal(report: &mut Report, name: &str, value: f64, unit: &'static str, goal: f64) {
    report.figure(name, value, unit);
    report.figure(&format!("{name}_goal"), goal, unit);
}

/// Runs every figure.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let ctx = photon::init(Config::default())?;
    ctx.get(&noop::remote(&ctx))?;
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    report.figure("local_cluster_start_ms", start_ms, "ms");
    report.figure("local_cluster_start_ms_goal", 200.0, "ms");

    let tasks_sync = sync_rate(|| {
        ctx.get(&noop::remote(&ctx))?;
        Ok(())
    })?;
    goal(report, "tasks_sync_per_s", tasks_sync, "1/s", 3_000.0);
    let tasks_async = batch_rate(|| {
        let refs: Vec<ObjectRef<u64>> = (0..BATCH).map(|_| noop::remote(&ctx)).collect();
        ctx.get_all(&refs)?;
        Ok(())
    })?;
    goal(report, "tasks_async_per_s", tasks_async, "1/s", 10_000.0);
    actor_figures(&ctx, report)?;
    object_figures(&ctx, report)?;
    nested_figure(&ctx, report)
}

/// A task fanning out nested tasks, from the driver's call to its result
/// (the first call makes the fanning worker's own context). Last, so the
/// worker it leaves behind as an owner cannot touch the other figures.
fn nested_figure(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    ctx.get(&fan_out_noops::remote(ctx, NESTED as u64))?;
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        ctx.get(&fan_out_noops::remote(ctx, NESTED as u64))?;
        rates.push(per_second(NESTED, started.elapsed()));
    }
    goal(
        report,
        "nested_tasks_async_per_s",
        median(rates),
        "1/s",
        10_000.0,
    );
    Ok(())
}

fn actor_figures(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let echo = EchoHandle::new(ctx)?;
    ctx.get(&echo.ping())?; // placed and constructed
    let sync = sync_rate(|| {
        ctx.get(&echo.ping())?;
        Ok(())
    })?;
    goal(report, "actor_calls_sync_per_s", sync, "1/s", 5_000.0);
    let async_rate = batch_rate(|| {
        let refs: Vec<ObjectRef<u64>> = (0..BATCH).map(|_| echo.ping()).collect();
        ctx.get_all(&refs)?;
        Ok(())
    })?;
    goal(
        report,
        "actor_calls_async_per_s",
        async_rate,
        "1/s",
        20_000.0,
    );
    ctx.kill(echo.handle())?;

    // n callers (driver threads) each calling their own actor, n = 2 (the cores).
    let actors: Vec<EchoHandle> = (0..2)
        .map(|_| EchoHandle::new_with(ctx, EchoHandle::options().num_cpus(0.0)))
        .collect::<photon::Result<_>>()?;
    for actor in &actors {
        ctx.get(&actor.ping())?;
    }
    let per_caller = BATCH / actors.len();
    let actors = &actors;
    let n_n = batch_rate(|| {
        std::thread::scope(|scope| {
            let callers: Vec<_> = actors
                .iter()
                .map(|actor| {
                    scope.spawn(move || {
                        let refs: Vec<ObjectRef<u64>> =
                            (0..per_caller).map(|_| actor.ping()).collect();
                        ctx.get_all(&refs)
                    })
                })
                .collect();
            for caller in callers {
                caller.join().expect("caller thread")?;
            }
            Ok(())
        })
    })?;
    report.figure("actor_calls_async_n_n_per_s", n_n, "1/s");
    for actor in actors {
        ctx.kill(actor.handle())?;
    }
    Ok(())
}

fn object_figures(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let put_small = sync_rate(|| {
        black_box(ctx.put(&0u64)?);
        Ok(())
    })?;
    goal(report, "put_small_per_s", put_small, "1/s", 10_000.0);
    let small = ctx.put(&42u64)?;
    let get_small = sync_rate(|| {
        black_box(ctx.get(&small)?);
        Ok(())
    })?;
    report.figure("get_small_per_s", get_small, "1/s");

    const SIZE: usize = 100 << 20;
    // A 100 MiB Arrow record batch read back: zero-copy, so the rate is far
    // above memcpy (only the IPC header is parsed; pages come in when read).
    let values: arrow::array::Int64Array = (0..(SIZE / 8) as i64).collect();
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "value",
        std::sync::Arc::new(values) as arrow::array::ArrayRef,
    )])?;
    let stored = ctx.put_batch(&batch)?;
    let mut read_rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let back = ctx.get_batch(&stored)?;
        read_rates.push(SIZE as f64 / started.elapsed().as_secs_f64() / 1e9);
        black_box(&back);
    }
    report.figure("get_batch_100mib_gbps", median(read_rates), "GB/s");
    drop(stored);
    let payload = ByteBuf::from(vec![7u8; SIZE]);
    let mut put_rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let object = ctx.put(&payload)?;
        put_rates.push(SIZE as f64 / started.elapsed().as_secs_f64() / 1e9);
        drop(object);
    }
    report.figure("put_100mib_gbps", median(put_rates), "GB/s");
    let mut target = vec![0u8; SIZE];
    let mut copy_rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        target.copy_from_slice(black_box(&payload));
        black_box(&target);
        copy_rates.push(SIZE as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    report.figure("memcpy_100mib_gbps_reference", median(copy_rates), "GB/s");

    Ok(())
}
