//! Cancelling tasks and actor calls: pending, running (cooperatively and by
//! force), finished.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use photon::{Config, Context, Error, ObjectRef};

use crate::check;
use crate::functions::*;

/// A cluster of one CPU: a running task holds the only worker lease.
fn one_cpu() -> Context {
    photon::init(Config {
        num_cpus: Some(1.0),
        ..Config::default()
    })
    .expect("embedded cluster starts")
}

/// Spins for up to `limit_ms`, checking for cancellation between steps.
#[photon::remote]
pub fn spin_until_cancelled(limit_ms: u64) -> u64 {
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(limit_ms) {
        if photon::is_cancelled() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed().as_millis() as u64
}

/// Sleeps without looking at cancellation (only a forced cancel stops it).
#[photon::remote]
pub fn sleep_stubbornly(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps on the async runtime (a cancel interrupts the await).
#[photon::remote]
pub async fn async_sleep(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

fn expect_cancelled<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    ctx: &Context,
    object: &ObjectRef<T>,
    function: &str,
    forced: bool,
) -> Result<(), Failed> {
    match ctx.get_timeout(object, Duration::from_secs(20)) {
        Err(Error::TaskCancelled {
            function: named,
            object: id,
            how,
        }) => {
            check(named.ends_with(function), format!("names {named}"))?;
            check(id == object.id(), "names the object")?;
            check(
                how.contains("killed") == forced,
                format!("forced {forced}: {how:?}"),
            )?;
            Ok(())
        }
        other => Err(format!("expected TaskCancelled for {function}, got {other:?}").into()),
    }
}

/// `square` runs within `limit`: the only CPU was given back.
fn cpu_free_within(ctx: &Context, limit: Duration) -> Result<(), Failed> {
    let started = Instant::now();
    let value = ctx.get_timeout(&square::remote(ctx, 7u64), limit)?;
    check(value == 49, "a later task's value")?;
    check(
        started.elapsed() < limit,
        format!("a later task took {:?}", started.elapsed()),
    )
}

pub fn pending_tasks_never_run() -> Result<(), Failed> {
    let ctx = one_cpu();
    let running = sleep_stubbornly::remote(&ctx, 1_500u64);
    let waiting = sleep_stubbornly::remote(&ctx, 1_500u64);
    let started = Instant::now();
    ctx.cancel(&waiting, false)?;
    expect_cancelled(&ctx, &waiting, "sleep_stubbornly", false)?;
    check(
        started.elapsed() < Duration::from_secs(1),
        format!(
            "a queued task is cancelled at once: {:?}",
            started.elapsed()
        ),
    )?;
    // The running one is untouched.
    check(ctx.get(&running)? == 1_500, "the running task's value")?;
    // A task waiting on an argument that is not ready fails at once and
    // never runs.
    let slow = sleep_stubbornly::remote(&ctx, 2_000u64);
    let after = square::remote(&ctx, &slow);
    let started = Instant::now();
    ctx.cancel(&after, false)?;
    expect_cancelled(&ctx, &after, "(waiting for its arguments)", false)?;
    check(
        started.elapsed() < Duration::from_secs(1),
        format!(
            "a task waiting on arguments is cancelled at once: {:?}",
            started.elapsed()
        ),
    )?;
    check(ctx.get(&slow)? == 2_000, "its argument's task still ran")?;
    expect_cancelled(&ctx, &after, "(waiting for its arguments)", false)?;
    Ok(())
}

pub fn running_tasks_are_interrupted() -> Result<(), Failed> {
    let ctx = one_cpu();
    // Cooperative: a synchronous task that checks photon::is_cancelled().
    let spinning = spin_until_cancelled::remote(&ctx, 60_000u64);
    std::thread::sleep(Duration::from_millis(500));
    ctx.cancel(&spinning, false)?;
    expect_cancelled(&ctx, &spinning, "spin_until_cancelled", false)?;
    cpu_free_within(&ctx, Duration::from_secs(10))?;
    // An async task is interrupted at its await.
    let napping = async_sleep::remote(&ctx, 60_000u64);
    std::thread::sleep(Duration::from_millis(500));
    ctx.cancel(&napping, false)?;
    expect_cancelled(&ctx, &napping, "async_sleep", false)?;
    cpu_free_within(&ctx, Duration::from_secs(10))?;
    // Force: a task that never looks is stopped by killing its worker.
    let stubborn = sleep_stubbornly::remote(&ctx, 60_000u64);
    std::thread::sleep(Duration::from_millis(500));
    ctx.cancel(&stubborn, true)?;
    expect_cancelled(&ctx, &stubborn, "sleep_stubbornly", true)?;
    cpu_free_within(&ctx, Duration::from_secs(10))?;
    Ok(())
}

pub fn finished_tasks_keep_their_value() -> Result<(), Failed> {
    let ctx = one_cpu();
    let done = square::remote(&ctx, 9u64);
    check(ctx.get(&done)? == 81, "value")?;
    ctx.cancel(&done, false)?;
    ctx.cancel(&done, true)?;
    check(
        ctx.get(&done)? == 81,
        "cancelling a finished task does nothing",
    )?;
    Ok(())
}

pub fn actor_calls_not_started_never_run() -> Result<(), Failed> {
    let ctx = one_cpu();
    let counter = CounterHandle::new_with(&ctx, CounterHandle::options().num_cpus(0.0), 0u64)?;
    let sleeper = SleeperHandle::new_with(&ctx, SleeperHandle::options().num_cpus(0.0))?;
    check(ctx.get(&counter.incr(1u64))? == 1, "the actor is up")?;
    // The sleeper's first call runs; its second waits behind it.
    let first = sleeper.nap(1_000u64);
    let second = sleeper.nap(1u64);
    std::thread::sleep(Duration::from_millis(200));
    ctx.cancel(&second, false)?;
    check(ctx.get(&first)? == 1_000, "the running call finished")?;
    expect_cancelled(&ctx, &second, "nap", false)?;
    check(ctx.get(&sleeper.nap(2u64))? == 2, "later calls run")?;
    // A cancelled counter call never changes its state.
    let waiting = sleeper.nap(800u64);
    let gated = counter.incr_after(&waiting, 10u64);
    ctx.cancel(&gated, false)?;
    expect_cancelled(&ctx, &gated, "incr_after", false)?;
    check(
        ctx.get(&counter.value())? == 1,
        "the cancelled call never ran",
    )?;
    // Force would kill the actor: refused.
    let long = sleeper.nap(1_000u64);
    match ctx.cancel(&long, true) {
        Err(Error::Config(message)) => check(message.contains("kill"), message)?,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    check(ctx.get(&long)? == 1_000, "the refused cancel left the call")?;
    Ok(())
}
