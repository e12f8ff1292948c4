//! An object's fate follows its owner's: drivers killed with SIGKILL while
//! they hold stored, spilled and pinned objects and lineage leave nothing
//! behind on any node or in the head. Their actors go with them, unless
//! created detached.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use photon::arrow::array::{Int64Array, RecordBatch};
use photon::testing::{LoopbackCluster, Raylet};
use photon::{Config, Context, ObjectRef};

use crate::functions::{CounterHandle, make_bytes};
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
    if spec["mode"] == "actors" {
        actors_driver(&ctx);
    }
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

/// Driver mode `actors`: a detached counter named `kept` and one it owns,
/// named `owned`, each at 41; says READY and waits to be killed.
fn actors_driver(ctx: &Context) -> ! {
    let options = CounterHandle::options();
    let kept = CounterHandle::new_with(ctx, options.clone().name("kept").detached(), 40u64)
        .expect("detached actor");
    let owned = CounterHandle::new_with(ctx, options.name("owned"), 40u64).expect("actor");
    assert_eq!(ctx.get(&kept.incr(1u64)).expect("call"), 41);
    assert_eq!(ctx.get(&owned.incr(1u64)).expect("call"), 41);
    println!("READY");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(3600));
    std::process::exit(0);
}

fn start_driver(cluster: &LoopbackCluster, raylet: &Raylet) -> Result<Child, Failed> {
    start_driver_in(cluster, raylet, "objects")
}

fn start_driver_in(
    cluster: &LoopbackCluster,
    raylet: &Raylet,
    mode: &str,
) -> Result<Child, Failed> {
    let spec = serde_json::json!({
        "head": cluster.head_address(), "token": cluster.token(), "raylet": raylet.address,
        "mode": mode,
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

/// A driver killed with SIGKILL takes its actors with it within 5 s (their
/// CPUs free), but not the one it created detached: that one keeps its
/// state, another driver finds it by name, and only a kill ends it.
pub fn a_detached_actor_outlives_its_killed_driver() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    let raylet = cluster.raylet(serde_json::json!({}));
    let observer = cluster.driver(&raylet);
    let free_cpus = |ctx: &Context| -> f64 {
        let nodes = ctx.cluster_nodes().expect("cluster status");
        nodes[0].available.get("CPU").copied().unwrap_or(0.0)
    };
    let mut driver = start_driver_in(&cluster, &raylet, "actors")?;
    wait_ready(&mut driver)?;
    check(
        wait_until(Duration::from_secs(5), || free_cpus(&observer) == 0.0),
        "the driver's two actors hold both CPUs",
    )?;
    driver.kill()?;
    driver.wait()?;
    let ended = wait_until(CLEANUP_LIMIT, || {
        CounterHandle::lookup(&observer, "owned").is_err() && free_cpus(&observer) == 1.0
    });
    check(
        ended,
        format!(
            "{CLEANUP_LIMIT:?} after its driver's SIGKILL the owned actor is gone and its CPU free \
             ({} CPUs free)",
            free_cpus(&observer)
        ),
    )?;
    let kept = CounterHandle::lookup(&observer, "kept")?;
    check(
        observer.get(&kept.incr(1u64))? == 42,
        "the detached actor kept its state",
    )?;
    observer.kill(kept.handle())?;
    check(
        wait_until(CLEANUP_LIMIT, || {
            CounterHandle::lookup(&observer, "kept").is_err() && free_cpus(&observer) == 2.0
        }),
        "a killed detached actor ends and frees its CPU",
    )?;
    // A detached actor needs a name: nothing else could find or end it.
    match CounterHandle::new_with(&observer, CounterHandle::options().detached(), 0u64) {
        Err(photon::Error::Config(message)) => check(message.contains("needs a name"), message),
        other => Err(format!("expected a refusal, got {:?}", other.map(|_| ())).into()),
    }
}
