//! A node without a job's binary fetches it from the head by content hash.

use std::collections::HashMap;
use std::sync::Arc;

use photon_proto::auth::AttachToken;
use photon_proto::v1::PackageChunk;
use photon_proto::v1::jobs_client::JobsClient;
use photon_raylet::HeadLink;
use photon_raylet::packages::{
    PROGRAM_PACKAGE_ENV, PackageCache, WORKING_DIR_ENV, WORKING_DIR_PACKAGE_ENV,
};
use sha2::{Digest, Sha256};

const TOKEN: &str = "package-test-token";

/// The program a worker of `program` with `env` runs on this node.
async fn resolve(
    cache: &PackageCache,
    program: &str,
    env: &HashMap<String, String>,
) -> Result<String, tonic::Status> {
    let (mut program, mut env) = (program.to_string(), env.clone());
    cache.prepare(&mut program, &mut env).await?;
    Ok(program)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_and_a_working_dir_are_fetched_once_verified_and_cached() {
    let head_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let head = tokio::spawn(photon_head::run(
        photon_head::HeadConfig::new(head_dir.path(), TOKEN),
        listener,
        stop.clone().cancelled_owned(),
    ));

    let program = b"#!/bin/sh\necho fetched from the head\n".to_vec();
    let sha256 = hex::encode(Sha256::digest(&program));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut jobs = JobsClient::with_interceptor(channel, AttachToken::new(TOKEN).unwrap());
    let chunk = PackageChunk {
        sha256: sha256.clone(),
        data: program.clone().into(),
    };
    let stored = jobs
        .upload_package(tokio_stream::iter([chunk]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.size, program.len() as u64);

    let cache_dir = tempfile::tempdir().unwrap();
    let link = Arc::new(HeadLink::new(&address, TOKEN).unwrap());
    let cache = PackageCache::new(cache_dir.path().join("packages"), link);
    let env = HashMap::from([(PROGRAM_PACKAGE_ENV.to_string(), sha256.clone())]);
    // Two workers asking at once share one download.
    let (first, second) = tokio::join!(
        resolve(&cache, "/laptop/build/my-job", &env),
        resolve(&cache, "/laptop/build/my-job", &env)
    );
    let path = first.unwrap();
    assert_eq!(second.unwrap(), path);
    assert_eq!(
        path,
        cache_dir
            .path()
            .join("packages")
            .join(&sha256)
            .display()
            .to_string()
    );
    assert_eq!(std::fs::read(&path).unwrap(), program);
    let output = std::process::Command::new(&path).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "fetched from the head\n"
    );
    // Only the package: no temporary files left.
    assert_eq!(
        std::fs::read_dir(cache_dir.path().join("packages"))
            .unwrap()
            .count(),
        1
    );

    // A program this node has is used as it is; one without a package too.
    assert_eq!(resolve(&cache, "/bin/sh", &env).await.unwrap(), "/bin/sh");
    assert_eq!(
        resolve(&cache, "/no/such", &HashMap::new()).await.unwrap(),
        "/no/such"
    );
    // A package the head does not have is a clear error.
    let unknown = HashMap::from([(PROGRAM_PACKAGE_ENV.to_string(), "ab".repeat(32))]);
    let err = resolve(&cache, "/laptop/other", &unknown)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("cannot fetch the job's program"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("not on this head"),
        "{}",
        err.message()
    );

    // A working directory (a tar) is unpacked once, beside the packages.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "data/input.txt", &b"hello"[..])
        .unwrap();
    let archive = tar.into_inner().unwrap();
    let tar_sha = hex::encode(Sha256::digest(&archive));
    jobs.upload_package(tokio_stream::iter([PackageChunk {
        sha256: tar_sha.clone(),
        data: archive.into(),
    }]))
    .await
    .unwrap();
    let env = HashMap::from([(WORKING_DIR_PACKAGE_ENV.to_string(), tar_sha.clone())]);
    let prepared = || async {
        let (mut program, mut env) = ("/bin/sh".to_string(), env.clone());
        cache.prepare(&mut program, &mut env).await.unwrap();
        env[WORKING_DIR_ENV].clone()
    };
    let (first, second) = tokio::join!(prepared(), prepared());
    assert_eq!(first, second);
    let unpacked = cache_dir
        .path()
        .join("packages")
        .join(format!("{tar_sha}.d"));
    assert_eq!(first, unpacked.display().to_string());
    assert_eq!(
        std::fs::read_to_string(unpacked.join("data/input.txt")).unwrap(),
        "hello"
    );
    // The program, the tar and the directory: no half-unpacked leftovers.
    assert_eq!(
        std::fs::read_dir(cache_dir.path().join("packages"))
            .unwrap()
            .count(),
        3
    );

    stop.cancel();
    head.await.unwrap().unwrap();
}
