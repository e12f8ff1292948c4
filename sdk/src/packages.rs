//! Files a job's workers need on every node (Ray's `runtime_env`
//! `working_dir`): a directory and extra files packed into one tar, uploaded
//! once to the head's content-addressed package store (skipped when the head
//! has it), and named to raylets by its sha256 in the workers' environment.
//! Each raylet fetches, verifies and unpacks it once, and starts the job's
//! workers in it (`photon_raylet::packages`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use photon_proto::auth::AttachToken;
use photon_proto::v1::jobs_client::JobsClient;
use photon_proto::v1::{PackageChunk, PackageRef};
use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use photon_raylet::packages::{WORKING_DIR_ENV, WORKING_DIR_PACKAGE_ENV};

/// Bytes per upload message.
const CHUNK: usize = 1 << 20;

/// A client of the head's jobs service (which stores packages).
pub type Jobs = JobsClient<InterceptedService<Channel, AttachToken>>;

/// A client of the jobs service of the head at `address`.
pub fn jobs_client(address: &str, token: &str) -> crate::Result<Jobs> {
    crate::clients::jobs(address, token)
}

/// Packs `dir`'s contents (if any) and each of `files` (a file or a
/// directory, under its own name at the top) into a temporary tar.
pub fn pack(dir: Option<&Path>, files: &[PathBuf]) -> Result<tempfile::NamedTempFile, String> {
    let file = tempfile::NamedTempFile::new()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let writer = file
        .reopen()
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(writer));
    // Content, names and modes only (no mtimes or owners): unchanged files
    // give the same hash, so nothing is uploaded or unpacked again. Links
    // are packed as links, not as what they point to.
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    if let Some(dir) = dir {
        builder
            .append_dir_all(".", dir)
            .map_err(|e| format!("cannot pack the working directory {}: {e}", dir.display()))?;
    }
    for path in files {
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} names no file", path.display()))?;
        let packed = if path.is_dir() {
            builder.append_dir_all(name, path)
        } else {
            builder.append_path_with_name(path, name)
        };
        packed.map_err(|e| format!("cannot pack {}: {e}", path.display()))?;
    }
    builder
        .into_inner()
        .and_then(|mut writer| writer.flush())
        .map_err(|e| format!("cannot write the package: {e}"))?;
    Ok(file)
}

/// A package the head holds.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Its content hash, which names it.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Whether this call sent it (false: the head had it already).
    pub sent: bool,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The head refused or could not be reached.
    #[error("the head did not take the package: {}", .0.message())]
    Head(tonic::Status),
}

/// The sha256 of the file at `path`, in hex.
pub fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
}

/// Uploads the file at `path` to the head behind `jobs`, unless it has it.
pub async fn upload(jobs: &mut Jobs, path: &Path) -> Result<Uploaded, UploadError> {
    let read_error = |source| UploadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let owned = path.to_path_buf();
    let (sha256, bytes) = tokio::task::spawn_blocking(move || sha256_of(&owned))
        .await
        .expect("hashing task panicked")
        .map_err(read_error)?;
    let present = jobs
        .has_package(PackageRef {
            sha256: sha256.clone(),
            size: 0,
        })
        .await
        .map_err(UploadError::Head)?
        .into_inner()
        .present;
    if present {
        return Ok(Uploaded {
            sha256,
            bytes,
            sent: false,
        });
    }
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let hash = sha256.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut buffer = vec![0; CHUNK];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                return Ok(());
            }
            let chunk = PackageChunk {
                sha256: hash.clone(),
                data: bytes::Bytes::copy_from_slice(&buffer[..n]),
            };
            if sender.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let stored = jobs
        .upload_package(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await;
    // A read error cut the stream short: it, not the head's hash mismatch,
    // is the cause.
    reader
        .await
        .expect("reading task panicked")
        .map_err(read_error)?;
    stored.map_err(UploadError::Head)?;
    Ok(Uploaded {
        sha256,
        bytes,
        sent: true,
    })
}
