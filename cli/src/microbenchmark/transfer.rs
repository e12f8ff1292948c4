//! Object transfer between two raylets on loopback. Reference: memcpy of the
//! same size, measured in the same run.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use photon_proto::v1::{DeleteObjectRequest, FetchObjectRequest};
use photon_proto::{JobId, ObjectId, TaskId};
use photon_raylet::transfer::{connect, pull_object, push_object};

use super::processes::ProcessCluster;
use super::{Report, median};

const SIZE: usize = 256 << 20;

/// Runs the transfer benchmark.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
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

    let mut cluster = ProcessCluster::start_head()?;
    let store = 4 * SIZE as u64;
    let (a, b) = (cluster.add_raylet(store)?, cluster.add_raylet(store)?);
    let runtime = tokio::runtime::Runtime::new()?;
    let data = Bytes::from(data);
    let task = TaskId::for_child(TaskId::for_driver(JobId::from_u32(1)), 1);
    let (push_rates, transfer_rates) = runtime.block_on(async {
        let mut holder = connect(&a, &cluster.token).map_err(anyhow::Error::msg)?;
        let mut fetcher = connect(&b, &cluster.token).map_err(anyhow::Error::msg)?;
        let (mut pushes, mut transfers) = (Vec::new(), Vec::new());
        // Round 0 lands on fresh shared-memory pages; later rounds reuse them,
        // as a running raylet does.
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
    let (mut push_rates, mut transfer_rates) = (push_rates, transfer_rates);
    report.figure("object_push_256mib_cold_gbps", push_rates.remove(0), "GB/s");
    report.figure(
        "object_transfer_256mib_cold_gbps",
        transfer_rates.remove(0),
        "GB/s",
    );
    report.figure("object_push_256mib_gbps", median(push_rates), "GB/s");
    let transfer = median(transfer_rates);
    report.figure("object_transfer_256mib_gbps", transfer, "GB/s");
    report.figure("object_transfer_vs_memcpy", transfer / memcpy, "ratio");
    Ok(())
}
