//! Head cost as a cluster grows: simulated raylets (registration, then a
//! heartbeat stream each with changing resource availability) against one
//! real head process; reports the head's CPU and RSS. Reference: the same
//! head with no nodes, measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::{Heartbeat, NodeInfo, RegisterNodeRequest};
use photon_proto::{NodeId, PROTOCOL_VERSION, Quantity, ResourceSet};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::Report;
use super::processes::ProcessCluster;

const HEARTBEAT: Duration = Duration::from_millis(500);
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(5);

/// One simulated raylet: registers, then heartbeats until `stop`.
async fn simulated_node(
    address: String,
    token: String,
    index: usize,
    beats: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let endpoint = photon_proto::tls::endpoint(&address).map_err(anyhow::Error::msg)?;
    let channel = endpoint.connect().await?;
    let mut client = HeadClient::with_interceptor(
        channel,
        AttachToken::new(&token).map_err(anyhow::Error::msg)?,
    );
    let node_id = NodeId::random();
    let total = ResourceSet::new()
        .with("CPU", Quantity::whole(16))
        .with("GPU", Quantity::whole(8))
        .with("memory", Quantity::whole(64 << 30));
    client
        .register_node(RegisterNodeRequest {
            protocol_version: PROTOCOL_VERSION,
            node: Some(NodeInfo {
                node_id: node_id.to_vec(),
                // Nothing listens here: when the stream ends the head's probe fails fast.
                address: "127.0.0.1:9".into(),
                total: total.to_proto(),
                ..Default::default()
            }),
            objects: Vec::new(),
            actors: Vec::new(),
            bundles: Vec::new(),
        })
        .await?;
    let (sender, receiver) = mpsc::channel(4);
    let mut replies = client
        .heartbeats(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    // Spread the nodes' heartbeats over the interval, as real raylets are.
    tokio::time::sleep(HEARTBEAT.mul_f64((index % 100) as f64 / 100.0)).await;
    let mut ticks = tokio::time::interval(HEARTBEAT);
    let mut round = 0i64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            reply = replies.message() => bail!("the head ended a heartbeat stream: {reply:?}"),
            _ = ticks.tick() => {
                round += 1;
                // A resource update with every beat: some CPUs and GPUs in use.
                let mut available = total.clone();
                available.set("CPU", Quantity::whole(16 - round % 16));
                available.set("GPU", Quantity::from_units(80_000 - (round % 32) * 2_500));
                let beat = Heartbeat { node_id: node_id.to_vec(), available: available.to_proto(), object_store_used: (round as u64) << 20, draining: false, pending: Vec::new(), store: None };
                if sender.send(beat).await.is_err() {
                    bail!("heartbeat stream closed");
                }
                beats.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Measures the head with `nodes` simulated raylets: (CPU % of one core, RSS MiB, heartbeats/s).
fn measure(nodes: usize) -> anyhow::Result<(f64, f64, f64)> {
    let head = ProcessCluster::start_head()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let stop = CancellationToken::new();
    let beats = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..nodes)
        .map(|i| {
            runtime.spawn(simulated_node(
                head.address.clone(),
                head.token.clone(),
                i,
                beats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    std::thread::sleep(WARM_UP);
    if tasks.iter().any(|t| t.is_finished()) {
        bail!("a simulated node failed during warm-up");
    }
    let (cpu_before, beats_before, start) = (
        head.head_cpu_seconds()?,
        beats.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(MEASURE);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (head.head_cpu_seconds()? - cpu_before) / elapsed * 100.0;
    let rate = (beats.load(Ordering::Relaxed) - beats_before) as f64 / elapsed;
    let rss = head.head_rss_mib()?;
    stop.cancel();
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok((cpu, rss, rate))
}

/// Runs the head benchmark for each node count.
pub fn run(report: &mut Report, node_counts: &[usize]) -> anyhow::Result<()> {
    let (idle_cpu, idle_rss, _) = measure(0)?;
    report.figure("head_cpu_pct_idle", idle_cpu, "% of a core");
    report.figure("head_rss_mib_idle", idle_rss, "MiB");
    for &nodes in node_counts {
        let (cpu, rss, rate) = measure(nodes)?;
        report.figure(&format!("head_cpu_pct_{nodes}_nodes"), cpu, "% of a core");
        report.figure(&format!("head_rss_mib_{nodes}_nodes"), rss, "MiB");
        report.figure(&format!("head_heartbeats_per_s_{nodes}_nodes"), rate, "1/s");
    }
    Ok(())
}
