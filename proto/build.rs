//! Generates the tonic/prost code from `proto/photon/*.proto`.
//!
//! A fresh machine has no system `protoc`, so we use the one vendored by the
//! `protoc-bin-vendored` crate unless the user points `PROTOC` at their own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc);
    // Object payloads as `Bytes`, so chunks can borrow shared memory instead of copying.
    prost_config.bytes([
        ".photon.v1.ObjectChunk.data",
        ".photon.v1.TaskArg.value",
        ".photon.v1.TaskReply.value",
        ".photon.v1.ReturnObject.value",
        ".photon.v1.PackageChunk.data",
        ".photon.v1.LogChunk.data",
    ]);
    tonic_prost_build::configure().compile_with_config(
        prost_config,
        &[
            "proto/photon/v1/common.proto",
            "proto/photon/v1/head.proto",
            "proto/photon/v1/job.proto",
            "proto/photon/v1/raylet.proto",
            "proto/photon/v1/task.proto",
            "proto/photon/v1/worker.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
