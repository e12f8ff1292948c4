//! Object transfer between two raylets on loopback. Reference: memcpy of the
//! same size, measured in the same run.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use photon_proto::tls::{Tls, TlsFiles};
use photon_proto::v1::{DeleteObjectRequest, FetchObjectRequest};
use photon_proto::{JobId, ObjectId, TaskId};
use photon_raylet::transfer::{connect, pull_object, push_object};

use super::processes::ProcessCluster;
use super::{Report, median};

const SIZE: usize = 256 << 20;

/// Runs the transfer benchmark; with `tls`, again over TLS.
pub fn run(report: &mut Report, tls: bool) -> anyhow::Result<()> {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 + i / 7919) as u8).collect();
    let mut target = vec![0u8; SIZE];
    let memcpy = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                target.copy_from_slice(&data);
                black_box(&target);
                SIZE as f64 / start.elapsed().as_secs_f64() / 1e9
            })
            .collect(),
    );
    drop(target);
    report.figure("memcpy_256mib_gbps", memcpy, "GB/s");
    let data = Bytes::from(data);

    let plaintext = Rates::measure(ProcessCluster::start_head()?, &data)?;
    report.figure("object_push_256mib_cold_gbps", plaintext.push_cold, "GB/s");
    report.figure(
        "object_transfer_256mib_cold_gbps",
        plaintext.transfer_cold,
        "GB/s",
    );
    report.figure("object_push_256mib_gbps", plaintext.push, "GB/s");
    report.figure("object_transfer_256mib_gbps", plaintext.transfer, "GB/s");
    report.figure(
        "object_transfer_vs_memcpy",
        plaintext.transfer / memcpy,
        "ratio",
    );
    if !tls {
        return Ok(());
    }
    let cluster = ProcessCluster::start_head_with(&["--tls", "auto"])?;
    let ca = cluster.session_dir().join("tls/ca.pem");
    photon_proto::tls::configure(Some(
        Tls::load(TlsFiles { ca, identity: None }).map_err(anyhow::Error::msg)?,
    ));
    let encrypted = Rates::measure(cluster, &data);
    photon_proto::tls::configure(None);
    let encrypted = encrypted?;
    report.figure("object_push_256mib_tls_gbps", encrypted.push, "GB/s");
    report.figure(
        "object_transfer_256mib_tls_gbps",
        encrypted.transfer,
        "GB/s",
    );
    report.figure(
        "object_transfer_tls_vs_plaintext",
        encrypted.transfer / plaintext.transfer,
        "ratio",
    );
    Ok(())
}

/// Push (driver → raylet) and transfer (raylet → raylet) rates of one
/// cluster: the first round on fresh shared-memory pages, then the median
/// of three on reused ones, as a running raylet has.
struct Rates {
    push_cold: f64,
    transfer_cold: f64,
    push: f64,
    transfer: f64,
}

impl Rates {
    fn measure(mut cluster: ProcessCluster, data: &Bytes) -> anyhow::Result<Self> {
        let store = 4 * SIZE as u64;
        let (a, b) = (cluster.add_raylet(store)?, cluster.add_raylet(store)?);
        let runtime = tokio::runtime::Runtime::new()?;
        let task = TaskId::for_child(TaskId::for_driver(JobId::from_u32(1)), 1);
        let (mut pushes, mut transfers) = runtime.block_on(async {
            let mut holder = connect(&a, &cluster.token).map_err(anyhow::Error::msg)?;
            let mut fetcher = connect(&b, &cluster.token).map_err(anyhow::Error::msg)?;
            let (mut pushes, mut transfers) = (Vec::new(), Vec::new());
            for round in 0..4 {
                let id = ObjectId::for_put(task, round);
                let start = Instant::now();
                push_object(&mut holder, id, data.clone()).await?;
                pushes.push(SIZE as f64 / start.elapsed().as_secs_f64() / 1e9);
                let start = Instant::now();
                let reply = fetcher
                    .fetch_object(FetchObjectRequest {
                        object_id: id.to_vec(),
                        source_address: String::new(),
                    })
                    .await?
                    .into_inner();
                transfers.push(SIZE as f64 / start.elapsed().as_secs_f64() / 1e9);
                if !reply.transferred || reply.size != SIZE as u64 {
                    bail!("fetch of {id} did not transfer it: {reply:?}");
                }
                let back = pull_object(&mut fetcher, id)
                    .await
                    .context("pulling the copy back")?;
                if back[..] != data[..] {
                    bail!("the copy of {id} on the second raylet differs from the original");
                }
                drop(back);
                for client in [&mut holder, &mut fetcher] {
                    client
                        .delete_object(DeleteObjectRequest {
                            object_id: id.to_vec(),
                        })
                        .await?;
                }
            }
            Ok::<_, anyhow::Error>((pushes, transfers))
        })?;
        Ok(Self {
            push_cold: pushes.remove(0),
            transfer_cold: transfers.remove(0),
            push: median(pushes),
            transfer: median(transfers),
        })
    }
}
