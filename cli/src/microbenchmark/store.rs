//! Object store microbenchmark. Reference: plain memcpy into warm memory.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use photon_object_store::{MappedObject, ObjectDescriptor, ObjectStore, StoreConfig};
use photon_proto::{JobId, ObjectId, TaskId};

use super::{Report, median};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const SMALL: usize = 1024;
const SMALL_COUNT: u32 = 200_000;

fn gbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// Sums every 8-byte word: touches every byte, vectorises, and detects corruption.
fn word_sum(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&b| u64::from(b)).sum();
    words
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .fold(tail, u64::wrapping_add)
}

fn object_ids() -> impl FnMut() -> ObjectId {
    let task = TaskId::for_child(TaskId::for_driver(JobId::from_u32(1)), 1);
    let mut next = 0;
    move || {
        next += 1;
        ObjectId::for_put(task, next)
    }
}

/// Median rate of copying `source` into a warm buffer of the same size.
fn memcpy_gbps(source: &[u8], reps: usize) -> f64 {
    let mut target = vec![1u8; source.len()];
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                target.copy_from_slice(source);
                black_box(&target);
                gbps(source.len(), start.elapsed())
            })
            .collect(),
    )
}

/// Times `put` of `size` bytes `reps` times (each deleted after), returning
/// the first (fresh tmpfs pages) and the median of the rest (reused memory).
fn time_puts(
    store: &ObjectStore,
    data: &[u8],
    reps: usize,
    next_id: &mut impl FnMut() -> ObjectId,
) -> anyhow::Result<(f64, f64)> {
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let id = next_id();
        let start = Instant::now();
        let mut writer = store.create(id, data.len() as u64)?;
        writer.copy_from_slice(data);
        writer.seal()?;
        rates.push(gbps(data.len(), start.elapsed()));
        store.delete(id)?;
    }
    let cold = rates.remove(0);
    Ok((cold, median(rates)))
}

/// Runs the store benchmark and prints every figure.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    // References: memcpy between warm buffers of each size.
    let source: Vec<u8> = (0..GIB).map(|i| (i * 7 + i / 4096) as u8).collect();
    let memcpy = memcpy_gbps(&source[..100 * MIB], 7);
    report.figure("memcpy_100mib_gbps", memcpy, "GB/s");
    let memcpy_1gib = memcpy_gbps(&source, 3);
    report.figure("memcpy_1gib_gbps", memcpy_1gib, "GB/s");

    let store = ObjectStore::open(StoreConfig::with_capacity((GIB + 512 * MIB) as u64))
        .context("cannot open a 1.5 GiB object store for the benchmark")?;
    let mut next_id = object_ids();

    let (cold, warm) = time_puts(&store, &source[..100 * MIB], 8, &mut next_id)?;
    report.figure("store_put_100mib_cold_gbps", cold, "GB/s");
    report.figure("store_put_100mib_gbps", warm, "GB/s");
    report.figure("store_put_100mib_vs_memcpy", warm / memcpy, "ratio");

    let (cold, warm) = time_puts(&store, &source, 4, &mut next_id)?;
    report.figure("store_put_1gib_cold_gbps", cold, "GB/s");
    report.figure("store_put_1gib_gbps", warm, "GB/s");
    report.figure("store_put_1gib_vs_memcpy_100mib", warm / memcpy, "ratio");
    report.figure("store_put_1gib_vs_memcpy_1gib", warm / memcpy_1gib, "ratio");

    let big = next_id();
    store.put(big, &source)?;
    let expected = word_sum(&source);
    let mut get_times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        let view = store.get(big)?;
        black_box(view[view.len() - 1]);
        drop(view);
        get_times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    report.figure("store_get_1gib_us", median(get_times), "us");
    if word_sum(&store.get(big)?) != expected {
        bail!("the 1 GiB object read back differs from what was put");
    }
    store.delete(big)?;
    drop(source);

    let small_ids: Vec<ObjectId> = (0..SMALL_COUNT).map(|_| next_id()).collect();
    let payload = [0x5au8; SMALL];
    let start = Instant::now();
    for &id in &small_ids {
        let mut writer = store.create(id, SMALL as u64)?;
        writer.copy_from_slice(&payload);
        writer.seal()?;
    }
    report.figure(
        "store_put_small_per_s",
        f64::from(SMALL_COUNT) / start.elapsed().as_secs_f64(),
        "ops/s",
    );
    let start = Instant::now();
    for &id in &small_ids {
        let view = store.get(id)?;
        black_box(view[0]);
    }
    report.figure(
        "store_get_small_per_s",
        f64::from(SMALL_COUNT) / start.elapsed().as_secs_f64(),
        "ops/s",
    );
    for &id in &small_ids {
        store.delete(id)?;
    }

    let object: Vec<u8> = (0..100 * MIB).map(|i| (i * 13) as u8).collect();
    let id = next_id();
    store.put(id, &object)?;
    let view = store.get(id)?; // pins the object while the child reads it
    let descriptor = serde_json::to_string(&view.descriptor())?;
    let expected = word_sum(&object);
    for (name, lazy) in [
        ("store_cross_process_get_100mib_gbps", false),
        ("store_cross_process_get_100mib_lazy_gbps", true),
    ] {
        let rates = (0..3)
            .map(|_| child_read(&descriptor, lazy, expected))
            .collect::<anyhow::Result<Vec<_>>>()?;
        report.figure(name, median(rates), "GB/s");
    }
    Ok(())
}

/// Starts `photon microbenchmark store-reader` and returns its read rate.
fn child_read(descriptor: &str, lazy: bool, expected: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the photon binary to start a reader")?;
    let mut command = Command::new(exe);
    command.args(["microbenchmark", "store-reader", descriptor]);
    if lazy {
        command.arg("--lazy");
    }
    let output = command
        .output()
        .context("cannot start the reader process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "reader process failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let reply: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("reader printed {stdout:?}"))?;
    if reply["checksum"].as_u64() != Some(expected) {
        bail!("reader process saw different bytes: {reply}");
    }
    let nanos = reply["nanos"]
        .as_f64()
        .context("reader reply lacks nanos")?;
    let bytes = reply["bytes"]
        .as_f64()
        .context("reader reply lacks bytes")?;
    Ok(bytes / nanos)
}

/// The reader process: maps the object, reads every byte, reports time and checksum.
pub fn read_in_child(descriptor: &str, lazy: bool) -> anyhow::Result<()> {
    let descriptor: ObjectDescriptor =
        serde_json::from_str(descriptor).context("bad descriptor")?;
    let start = Instant::now();
    let object = if lazy {
        MappedObject::open(&descriptor)?
    } else {
        MappedObject::open_populated(&descriptor)?
    };
    let checksum = word_sum(&object);
    let nanos = start.elapsed().as_nanos();
    println!(
        "{}",
        serde_json::json!({"checksum": checksum, "nanos": nanos as u64, "bytes": object.len()})
    );
    Ok(())
}
