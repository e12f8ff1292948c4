//! Remote functions and actors the tests use.

use std::sync::Arc;
use std::time::Duration;

use photon::arrow::array::{Array, Int64Array, RecordBatch};

#[photon::remote]
pub fn square(x: u64) -> u64 {
    x * x
}

#[photon::remote]
pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[photon::remote]
pub fn sum_all(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[photon::remote]
pub async fn async_greet(name: String) -> String {
    tokio::time::sleep(Duration::from_millis(1)).await;
    format!("hello, {name}")
}

#[photon::remote]
pub fn checksum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[photon::remote]
pub fn make_bytes(len: u64, value: u8) -> Vec<u8> {
    vec![value; len as usize]
}

/// Adds one to every byte (a large object in, a large object out).
#[photon::remote(resources(stage_b = 1))]
pub fn bump(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().map(|b| b.wrapping_add(1)).collect()
}

#[photon::remote(resources(stage_a = 1))]
pub fn seed(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 200) as u8).collect()
}

#[photon::remote]
pub fn panics(message: String) -> u64 {
    panic!("{message}")
}

#[photon::remote]
pub fn fails(n: u32) -> Result<u64, String> {
    if n == 3 {
        Err("three is not allowed".into())
    } else {
        Ok(u64::from(n))
    }
}

/// Exits the worker the first time it runs for `marker`.
#[photon::remote]
pub fn exit_once(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"x").unwrap();
        std::process::exit(3);
    }
    "second try".into()
}

#[photon::remote]
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Counts to `steps`, `ms` per step, reporting each step as progress.
#[photon::remote]
pub fn count_slowly(steps: u64, ms: u64) -> u64 {
    count_reporting(steps, ms)
}

fn count_reporting(steps: u64, ms: u64) -> u64 {
    let progress = photon::TaskProgress::current();
    for step in 1..=steps {
        std::thread::sleep(Duration::from_millis(ms));
        progress.set(step, steps);
    }
    steps
}

#[photon::remote]
pub fn node_of_worker() -> String {
    std::env::var("PHOTON_NODE_ID").unwrap_or_default()
}

/// Holds its worker for `ms`, then says which node it ran on.
#[photon::remote]
pub fn node_after_ms(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    std::env::var("PHOTON_NODE_ID").unwrap_or_default()
}

pub struct Counter {
    value: u64,
}

#[photon::actor]
impl Counter {
    pub fn new(start: u64) -> Self {
        Counter { value: start }
    }

    pub fn broken(why: String) -> Result<Self, String> {
        Err(why)
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }

    /// `incr`, once `_gate` (another call's result) is ready.
    pub fn incr_after(&mut self, _gate: u64, by: u64) -> u64 {
        self.incr(by)
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    pub fn crash(&self) -> u64 {
        std::process::exit(9)
    }
}

pub struct Sleeper;

#[photon::actor]
impl Sleeper {
    pub fn new() -> Self {
        Sleeper
    }

    pub async fn nap(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    /// [`count_slowly`] as an actor method.
    pub fn count_slowly(&self, steps: u64, ms: u64) -> u64 {
        count_reporting(steps, ms)
    }
}

#[photon::remote]
pub fn count_rows(batch: RecordBatch) -> u64 {
    batch.num_rows() as u64
}

/// Doubles the `id` column (a record batch in, a record batch out).
#[photon::remote]
pub fn double_ids(batch: RecordBatch) -> Result<RecordBatch, String> {
    let ids = batch
        .column_by_name("id")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or("no Int64 column `id`")?;
    let doubled: Int64Array = ids.iter().map(|v| v.map(|v| v * 2)).collect();
    RecordBatch::try_new(
        batch.schema(),
        vec![Arc::new(doubled), batch.column(1).clone()],
    )
    .map_err(|e| e.to_string())
}

/// A batch column's first buffer lies in this process's mapping of a store segment.
pub fn in_shared_memory(array: &dyn Array) -> bool {
    let address = array.to_data().buffers()[0].as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("photon-store"))
        .any(|line| {
            let range = line.split_whitespace().next().unwrap_or("");
            let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
            let start = usize::from_str_radix(start, 16).unwrap_or(0);
            let end = usize::from_str_radix(end, 16).unwrap_or(0);
            (start..end).contains(&address)
        })
}

/// Touches `mib` MiB, then holds it for a while.
#[photon::remote]
pub fn hog(mib: u64) -> u64 {
    let memory = vec![1u8; (mib << 20) as usize];
    std::thread::sleep(Duration::from_secs(3));
    memory.iter().map(|&b| u64::from(b)).sum()
}
