//! Fan-out / fan-in: a thousand tasks on an embedded local cluster, their
//! results combined by more tasks without coming back to the driver.
//!
//! `cargo run --release -p photon-examples --bin tasks`

use std::time::Instant;

use photon::{Config, ObjectRef};

/// Squares a number (runs in a worker process).
#[photon::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Adds a batch of partial results (its arguments are ObjectRefs, resolved
/// before it runs).
#[photon::remote]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[photon::main]
fn main() -> photon::Result<()> {
    let started = Instant::now();
    let ctx = photon::init(Config::default())?;
    let squares: Vec<ObjectRef<u64>> = (0..1_000u64).map(|i| square::remote(&ctx, i)).collect();
    // Fan in by tens: each partial sum gets its inputs from the object store.
    let partials: Vec<ObjectRef<u64>> = squares
        .chunks(100)
        .map(|chunk| {
            let values: Vec<u64> = ctx.get_all(chunk).expect("squares");
            sum::remote(&ctx, values)
        })
        .collect();
    let total: u64 = ctx.get_all(&partials)?.into_iter().sum();
    assert_eq!(total, (0..1_000u64).map(|i| i * i).sum::<u64>());
    println!(
        "sum of the first 1000 squares = {total} ({} tasks in {:.0} ms, cluster start included)",
        squares.len() + partials.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
