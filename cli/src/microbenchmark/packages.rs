//! Shipping a job's files to nodes: a 90 MB model-like directory packed and
//! uploaded once to a head, then fetched, verified and unpacked by two
//! nodes' package caches at once (what `photon embed --address` does for
//! its model). Reference: copying the directory on this disk, in the same run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use photon_raylet::HeadLink;
use photon_raylet::packages::{PackageCache, WORKING_DIR_ENV, WORKING_DIR_PACKAGE_ENV};

use super::Report;

const TOKEN: &str = "package-benchmark";
/// The size of all-MiniLM-L6-v2's directory, rounded.
const MODEL_BYTES: usize = 90_000_000;

/// Runs the package benchmark.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let model = work.path().join("model");
    write_model_like_dir(&model)?;
    let started = Instant::now();
    copy_dir(&model, &work.path().join("copy"))?;
    report.figure(
        "local_copy_90mb_dir_s",
        started.elapsed().as_secs_f64(),
        "s",
    );

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let head_dir = work.path().join("head");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        let head = tokio::spawn(photon_head::run(
            photon_head::HeadConfig::new(&head_dir, TOKEN),
            listener,
            stop.clone().cancelled_owned(),
        ));
        let nodes: Vec<PackageCache> = (0..2)
            .map(|i| {
                let link = Arc::new(HeadLink::new(&address, TOKEN)?);
                Ok(PackageCache::new(
                    work.path().join(format!("node-{i}")),
                    link,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        for (round, name) in [
            (0, "ship_90mb_dir_to_2_nodes_s"),
            (1, "ship_again_cached_s"),
        ] {
            let started = Instant::now();
            let shipped = ship(&address, &model, &nodes).await?;
            let seconds = started.elapsed().as_secs_f64();
            report.figure(name, seconds, "s");
            if round == 0 {
                report.figure("pack_and_upload_s", shipped.upload_s, "s");
                report.figure(
                    "fetch_verify_unpack_on_2_nodes_s",
                    seconds - shipped.upload_s,
                    "s",
                );
            }
        }
        stop.cancel();
        head.await??;
        anyhow::Ok(())
    })
}

struct Shipped {
    upload_s: f64,
}

/// Packs and uploads `model` as a driver does, then has every node prepare
/// a worker's directory from it, concurrently; checks what they unpacked.
async fn ship(address: &str, model: &Path, nodes: &[PackageCache]) -> anyhow::Result<Shipped> {
    let started = Instant::now();
    let files = vec![model.to_path_buf()];
    let archive = tokio::task::spawn_blocking(move || photon::packages::pack(None, &files))
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut jobs = photon::packages::jobs_client(address, TOKEN)?;
    let uploaded = photon::packages::upload(&mut jobs, archive.path()).await?;
    let upload_s = started.elapsed().as_secs_f64();
    let prepared = futures::future::try_join_all(nodes.iter().map(|node| async {
        let mut program = "/bin/true".to_string();
        let mut env =
            HashMap::from([(WORKING_DIR_PACKAGE_ENV.to_string(), uploaded.sha256.clone())]);
        node.prepare(&mut program, &mut env).await?;
        anyhow::Ok(env[WORKING_DIR_ENV].clone())
    }))
    .await?;
    for dir in prepared {
        let weights = Path::new(&dir).join("model/model.safetensors");
        let size = std::fs::metadata(&weights)
            .with_context(|| format!("{} was not unpacked", weights.display()))?
            .len();
        anyhow::ensure!(
            size as usize > MODEL_BYTES / 2,
            "{} is short",
            weights.display()
        );
    }
    Ok(Shipped { upload_s })
}

/// A directory shaped like a sentence-transformers model: large weights,
/// a tokenizer and small configs, of pseudo-random bytes (no compression
/// or deduplication could shortcut them).
fn write_model_like_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    std::fs::write(dir.join("model.safetensors"), bytes(MODEL_BYTES - 800_000))?;
    std::fs::write(dir.join("tokenizer.json"), bytes(700_000))?;
    std::fs::write(dir.join("vocab.txt"), bytes(99_000))?;
    std::fs::write(dir.join("config.json"), bytes(1_000))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
