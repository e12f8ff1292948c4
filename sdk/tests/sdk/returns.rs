//! Calls with several returns (`num_returns`) and per-call options: each
//! return is its own object (fetched, passed on, freed and rebuilt on its
//! own); names show in errors; actor calls are retried across a restart.

use std::time::Duration;

use libtest_mimic::Failed;
use photon::testing::LoopbackCluster;
use photon::{Error, MethodOptions, ObjectRef};

use crate::{check, embedded, wait_until};

/// A large byte vector, its length and a label: three objects.
#[photon::remote(num_returns = 3)]
pub fn three_parts(len: u64) -> Result<(Vec<u8>, u64, String), String> {
    if len == 0 {
        return Err("no bytes to split".into());
    }
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    Ok((bytes, len, format!("{len} bytes")))
}

/// Two large halves.
#[photon::remote(num_returns = 2)]
pub fn halves(len: u64) -> (Vec<u8>, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 199) as u8).collect();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    (a.to_vec(), b.to_vec())
}

#[photon::remote]
pub fn byte_sum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Never finishes on its own (cancelled by the test).
#[photon::remote(num_returns = 2)]
pub async fn slow_pair() -> (u64, u64) {
    tokio::time::sleep(Duration::from_secs(600)).await;
    (1, 2)
}

/// Two returns made on a `stage_b` node: a small one (inline, held by the
/// owner) and a large one (in that node's store).
#[photon::remote(num_returns = 2, resources(stage_b = 1))]
pub fn pair_on_b(len: u64) -> (Vec<u8>, Vec<u8>) {
    let small: Vec<u8> = (0..1000u64).map(|i| (i % 97) as u8).collect();
    let large: Vec<u8> = (0..len).map(|i| (i % 89) as u8).collect();
    (small, large)
}

fn expected_sum(len: u64, modulus: u64) -> u64 {
    (0..len).map(|i| i % modulus).sum()
}

pub fn each_return_is_its_own_object() -> Result<(), Failed> {
    let ctx = embedded();
    let baseline = ctx.object_store_used()?;
    let len = 1_500_000u64;
    let (bytes, count, label): (ObjectRef<Vec<u8>>, ObjectRef<u64>, ObjectRef<String>) =
        three_parts::remote(&ctx, len);
    let ids = [bytes.id(), count.id(), label.id()];
    check(
        ids.iter().all(|id| id.task_id() == ids[0].task_id())
            && ids.iter().map(|id| id.index()).eq(0..3),
        format!("returns 0..3 of one task: {ids:?}"),
    )?;
    check(ctx.get(&count)? == len, "the second return")?;
    check(ctx.get(&label)? == "1500000 bytes", "the third return")?;
    // The large return went to the store; it travels as an argument without the others.
    let summed = ctx.get(&byte_sum::remote(&ctx, &bytes))?;
    check(
        summed == expected_sum(len, 251),
        format!("the first return passed on: {summed}"),
    )?;
    let fetched = ctx.get(&bytes)?;
    check(fetched.len() == len as usize, "the first return fetched")?;
    // Heartbeats carry store use every 500 ms.
    let stored = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used()
            .is_ok_and(|used| used >= baseline + len)
    });
    check(
        stored,
        format!(
            "the first return is in the store: {} bytes used, baseline {baseline}",
            ctx.object_store_used()?
        ),
    )?;
    // Freed on its own: the store lets it go while the other returns stay readable.
    drop(bytes);
    let freed = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used().is_ok_and(|used| used <= baseline)
    });
    check(
        freed,
        format!(
            "store use back to {baseline} after dropping the first return: {}",
            ctx.object_store_used()?
        ),
    )?;
    check(
        ctx.get(&count)? == len && ctx.get(&label)? == "1500000 bytes",
        "the others outlive it",
    )?;

    // Two large returns: dropping one frees one, not both.
    let half = 1_000_000u64;
    let (first, second) = halves::remote(&ctx, 2 * half);
    check(
        ctx.get(&byte_sum::remote(&ctx, &second))? > 0,
        "the second half passed on",
    )?;
    let (ready, _) = ctx.wait(
        std::slice::from_ref(&first),
        1,
        Some(Duration::from_secs(30)),
    );
    check(ready.len() == 1, "the first half is ready")?;
    drop(ready); // refs too
    let both = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used()
            .is_ok_and(|used| used >= baseline + 2 * half)
    });
    check(
        both,
        format!("both halves stored: {}", ctx.object_store_used()?),
    )?;
    drop(first);
    let one_left = wait_until(Duration::from_secs(10), || {
        ctx.object_store_used()
            .is_ok_and(|used| used < baseline + 2 * half && used >= baseline + half)
    });
    check(
        one_left,
        format!(
            "one half left after dropping the other: {} bytes used, baseline {baseline}",
            ctx.object_store_used()?
        ),
    )?;
    check(ctx.get(&second)?.len() == half as usize, "the kept half")?;
    Ok(())
}

pub fn failures_names_and_cancels_reach_every_return() -> Result<(), Failed> {
    let ctx = embedded();
    // An error fails every return, and the call's name is in it.
    let (bytes, count, _) =
        three_parts::remote_with(&ctx, three_parts::options().name("shard-7"), 0u64);
    for error in [
        ctx.get(&bytes).map(|_| ()).unwrap_err(),
        ctx.get(&count).map(|_| ()).unwrap_err(),
    ] {
        let text = error.to_string();
        check(
            matches!(error, Error::TaskFailed { .. })
                && text.contains("shard-7")
                && text.contains("three_parts")
                && text.contains("no bytes to split"),
            format!("a failed return: {text}"),
        )?;
    }
    // Cancelling one return cancels the call: both fail.
    let (first, second) = slow_pair::remote(&ctx);
    std::thread::sleep(Duration::from_millis(300));
    ctx.cancel(&second, false)?;
    for (which, outcome) in [("first", ctx.get(&first)), ("second", ctx.get(&second))] {
        check(
            matches!(outcome, Err(Error::TaskCancelled { .. })),
            format!("the {which} return of a cancelled call: {outcome:?}"),
        )?;
    }
    Ok(())
}

pub fn a_lost_return_is_rebuilt_from_lineage() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let head_node = cluster.raylet(serde_json::json!({}));
    let mut b_node = cluster.raylet(serde_json::json!({"stage_b": 1}));
    let ctx = cluster.driver(&head_node);
    let len = 400_000u64;
    let (first, second) = pair_on_b::remote(&ctx, len);
    let (ready, _) = ctx.wait(
        &[first.clone(), second.clone()],
        2,
        Some(Duration::from_secs(60)),
    );
    check(ready.len() == 2, "both returns made")?;
    // The large one lived only on the killed node; a new one reruns the
    // task for it, and the small one, which the owner holds, is unharmed.
    let _new_b = cluster.raylet(serde_json::json!({"stage_b": 1}));
    b_node.kill9();
    let rebuilt = ctx.get_timeout(&second, Duration::from_secs(60))?;
    check(
        rebuilt.len() == len as usize
            && rebuilt.iter().map(|&b| u64::from(b)).sum::<u64>() == expected_sum(len, 89),
        "the second return, rebuilt",
    )?;
    let other = ctx.get_timeout(&first, Duration::from_secs(60))?;
    check(
        other.len() == 1000
            && other.iter().map(|&b| u64::from(b)).sum::<u64>() == expected_sum(1000, 97),
        "the first return after the rebuild",
    )?;
    Ok(())
}

/// Splits values; crashes its worker once per marker file.
pub struct Splitter;

#[photon::actor(max_restarts = 2)]
impl Splitter {
    pub fn new() -> Self {
        Splitter
    }

    /// The smallest and the largest value: two objects.
    #[photon::method(num_returns = 2)]
    pub fn min_max(&self, values: Vec<i64>) -> Result<(i64, i64), String> {
        let min = values.iter().min().ok_or("no values")?;
        Ok((*min, *values.iter().max().expect("not empty")))
    }

    /// Kills its worker the first time `marker` is seen, then answers 42.
    #[photon::method(max_retries = 1)]
    pub fn crash_once(&mut self, marker: String) -> u64 {
        if std::fs::metadata(&marker).is_err() {
            std::fs::write(&marker, b"seen").expect("marker written");
            std::process::exit(3);
        }
        42
    }
}

pub fn actor_methods_take_returns_and_retries() -> Result<(), Failed> {
    let ctx = embedded();
    let splitter = SplitterHandle::new(&ctx)?;
    let (min, max) = splitter.min_max(vec![4i64, -9, 17, 0]);
    check(
        ctx.get(&min)? == -9 && ctx.get(&max)? == 17,
        "two returns of a method",
    )?;
    let (min, _) = splitter.min_max(Vec::<i64>::new());
    check(
        ctx.get(&min)
            .is_err_and(|e| e.to_string().contains("no values")),
        "a method's error fails its returns",
    )?;
    let dir = tempfile::tempdir()?;
    // The attribute's max_retries = 1: sent again after the restart.
    let marker = dir.path().join("first").display().to_string();
    let answer = ctx.get_timeout(&splitter.crash_once(marker), Duration::from_secs(60))?;
    check(answer == 42, format!("the retried call: {answer}"))?;
    // No retries for this call: it fails, named.
    let marker = dir.path().join("second").display().to_string();
    let options = MethodOptions::new().name("no-retry").max_retries(0);
    let outcome = ctx.get_timeout(
        &splitter.crash_once_with(options, marker),
        Duration::from_secs(60),
    );
    check(
        matches!(&outcome, Err(Error::ActorDied { reason, .. }) if reason.contains("no-retry")
            && reason.contains("crash_once")),
        format!("a call without retries: {outcome:?}"),
    )?;
    check(
        SplitterHandle::crash_once_options() == MethodOptions::new().max_retries(1),
        "the method's defaults",
    )?;
    // The actor restarted and still answers.
    let (min, _) = splitter.min_max(vec![3i64, 5]);
    check(ctx.get(&min)? == 3, "the restarted actor answers")?;
    Ok(())
}
