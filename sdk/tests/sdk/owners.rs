//! An object's fate follows its owner's: drivers killed with SIGKILL while
//! they hold stored, spilled and pinned objects and lineage leave nothing
//! behind on any node or in the head.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use photon::arrow::array::{Int64Array, RecordBatch};
use photon::testing::{LoopbackCluster, Raylet};
use photon::{Config, Context, ObjectRef};

use crate::functions::make_bytes;
use crate::{check, wait_until};

/// Set on a driver process: the cluster to join, as JSON.
const DRIVER_ENV: &str = "PHOTON_SDK_TEST_DRIVER";

/// Drivers killed: in waves of [`WAVE`] running side by side, each wave
/// killed together and checked before the next starts.
const DRIVERS: usize = 30;
const WAVE: usize = 5;

/// How long after a driver's death its objects may stay.
const CLEANUP_LIMIT: Duration = Duration::from_secs(5);

/// In driver mode (env set by [`start_driver`]), joins the cluster, stores
/// objects every way a driver can, says READY and waits to be killed.
pub fn driver_entry() {
    let Ok(spec) = std::env::var(DRIVER_ENV) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("driver spec");
    let text = |key: &str| Some(spec[key].as_str().unwrap().to_string());
    let ctx = photon::init(Config {
        address: text("head"),
        token: text("token"),
        raylet_address: text("raylet"),
        ..Config::default()
    })
    .expect("driver joins");
    // Four 4 MiB values fill the 16 MiB store: at least one spills.
    let stored: Vec<ObjectRef<Vec<u8>>> = (0..4u8)
        .map(|i| ctx.put(&vec![i; 4 << 20]).expect("put"))
        .collect();
    let just_over_inline = ctx.put(&vec![9u8; 200 << 10]).expect("put");
    // A task's stored result: a lineage record in the head.
    let made = make_bytes::remote(&ctx, 1_000_000u64, 7u8);
    ctx.get(&made).expect("task result");
    // A batch read in place: pinned for as long as this process holds it.
    let ids: Int64Array = (0..300_000i64).collect();
    let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as _)]).expect("batch");
    let batch_ref = ctx.put_batch(&batch).expect("put batch");
    let pinned = ctx.get_batch(&batch_ref).expect("get batch");
    println!("READY");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(3600));
    drop((stored, just_over_inline, made, batch_ref, pinned));
    std::process::exit(0);
}

fn start_driver(cluster: &LoopbackCluster, raylet: &Raylet) -> Result<Child, Failed> {
    let spec = serde_json::json!({
        "head": cluster.head_address(), "token": cluster.token(), "raylet": raylet.address,
    });
    Ok(Command::new(std::env::current_exe()?)
        .env(DRIVER_ENV, spec.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Waits until `child` (a started driver) says READY.
fn wait_ready(child: &mut Child) -> Result<(), Failed> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if line.trim() != "READY" {
        let _ = child.kill();
        let status = child.wait()?;
        return Err(format!("the driver did not get ready ({status}); it printed {line:?}").into());
    }
    Ok(())
}

/// What the cluster holds: per node (in start order) its store's objects,
/// bytes used, pinned and spilled, and the files in its spill directory;
/// and the head's lineage records.
#[derive(Debug, PartialEq, Eq)]
struct Holdings {
    nodes: Vec<(u64, u64, u64, u64, usize)>,
    lineage_records: u64,
}

impl Holdings {
    fn read(observer: &Context, raylets: &[Raylet]) -> Result<Self, Failed> {
        let views = observer.cluster_nodes()?;
        let mut nodes = Vec::new();
        for raylet in raylets {
            let view = views
                .iter()
                .find(|v| v.address == raylet.address)
                .ok_or_else(|| format!("raylet {} is not alive", raylet.address))?;
            nodes.push((
                view.object_store_objects,
                view.object_store_used,
                view.object_store_pinned,
                view.object_store_spilled_bytes,
                files_under(&raylet.spill_dir),
            ));
        }
        let (_, lineage_records) = observer.lineage_records()?;
        Ok(Self {
            nodes,
            lineage_records,
        })
    }

    fn spilled_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.3).sum()
    }

    fn pinned_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.2).sum()
    }
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => files_under(&entry.path()),
            _ => 1,
        })
        .sum()
}

pub fn killed_drivers_leave_nothing_behind() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let raylets = [
        cluster.raylet_with_store(serde_json::json!({}), 16 << 20),
        cluster.raylet_with_store(serde_json::json!({}), 16 << 20),
    ];
    let observer = cluster.driver(&raylets[0]);
    let baseline = Holdings::read(&observer, &raylets)?;
    check(
        baseline.nodes.iter().all(|n| *n == (0, 0, 0, 0, 0)) && baseline.lineage_records == 0,
        format!("an empty cluster holds nothing: {baseline:?}"),
    )?;
    let mut slowest = Duration::ZERO;
    for round in 0..DRIVERS / WAVE {
        let mut drivers = (0..WAVE)
            .map(|i| start_driver(&cluster, &raylets[i % 2]))
            .collect::<Result<Vec<Child>, Failed>>()?;
        for driver in &mut drivers {
            wait_ready(driver)?;
        }
        // The drivers really hold objects: stored, spilled, pinned, with lineage.
        let mut holding = Holdings::read(&observer, &raylets)?;
        let seen = wait_until(Duration::from_secs(5), || {
            holding = Holdings::read(&observer, &raylets).expect("cluster status");
            holding.spilled_bytes() > 0
                && holding.pinned_bytes() > 0
                && holding.lineage_records >= WAVE as u64
        });
        check(
            seen,
            format!(
                "round {round}: the drivers' objects are stored, spilled and pinned: {holding:?}"
            ),
        )?;
        for driver in &mut drivers {
            driver.kill()?; // SIGKILL
        }
        for driver in &mut drivers {
            driver.wait()?;
        }
        let killed = Instant::now();
        let mut now = holding;
        let freed = wait_until(CLEANUP_LIMIT, || {
            now = Holdings::read(&observer, &raylets).expect("cluster status");
            now == baseline
        });
        check(
            freed,
            format!(
                "round {round}: {CLEANUP_LIMIT:?} after the drivers' SIGKILL the cluster still holds {now:?}"
            ),
        )?;
        slowest = slowest.max(killed.elapsed());
    }
    eprintln!("{DRIVERS} killed drivers: everything freed, at most {slowest:?} after a kill");
    Ok(())
}
