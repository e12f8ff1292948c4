//! Job binaries this node lacks: a submitted job's driver runs its program
//! from the head node's package store, so its workers name a path that exists
//! only there. A raylet on another machine fetches the program from the head
//! by its content hash (the worker environment's `PHOTON_PROGRAM_PACKAGE`),
//! verifies it, and caches it; concurrent requests share one download.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Status;
use tracing::info;

use crate::head_link::HeadLink;

/// Environment variable naming the content hash of a job's program.
pub const PROGRAM_PACKAGE_ENV: &str = "PHOTON_PROGRAM_PACKAGE";

/// This node's cache of job binaries fetched from the head.
pub struct PackageCache {
    dir: PathBuf,
    link: Arc<HeadLink>,
    /// One download per package at a time; later callers wait on its lock.
    downloads: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PackageCache {
    /// A cache in `dir`, filled from the head behind `link`.
    pub fn new(dir: PathBuf, link: Arc<HeadLink>) -> Self {
        Self {
            dir,
            link,
            downloads: Default::default(),
        }
    }

    /// The program a worker should run: `program` itself if this node has
    /// it, else the cached copy of the package `env` names (fetched first if
    /// needed). A missing program without a package is left for the spawn to
    /// report.
    pub async fn resolve(
        &self,
        program: &str,
        env: &HashMap<String, String>,
    ) -> Result<String, Status> {
        if Path::new(program).exists() {
            return Ok(program.to_string());
        }
        let Some(sha256) = env.get(PROGRAM_PACKAGE_ENV) else {
            return Ok(program.to_string());
        };
        if !is_package_name(sha256) {
            return Err(Status::invalid_argument(format!(
                "{PROGRAM_PACKAGE_ENV}={sha256:?} is not a sha256 in hex"
            )));
        }
        let path = self.dir.join(sha256);
        if path.is_file() {
            touch(&path);
            return Ok(path.display().to_string());
        }
        let lock = self
            .downloads
            .lock()
            .await
            .entry(sha256.clone())
            .or_default()
            .clone();
        let _download = lock.lock().await;
        if !path.is_file() {
            self.download(sha256, &path).await?;
        }
        touch(&path);
        Ok(path.display().to_string())
    }

    async fn download(&self, sha256: &str, path: &Path) -> Result<(), Status> {
        let failed = |what: String| {
            Status::failed_precondition(format!(
                "cannot fetch the job's program (package {sha256}) from the head: {what}"
            ))
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", self.dir.display())))?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(|e| failed(format!("cannot write in {}: {e}", self.dir.display())))?;
        let mut chunks = self
            .link
            .download_package(sha256)
            .await
            .map_err(|s| failed(s.message().to_string()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|s| failed(s.message().to_string()))?;
            hasher.update(&chunk.data);
            size += chunk.data.len() as u64;
            temp.write_all(&chunk.data)
                .map_err(|e| failed(format!("cannot write: {e}")))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != *sha256 {
            return Err(failed(format!("the bytes hash to {actual}")));
        }
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| failed(e.to_string()))?;
        temp.persist(path).map_err(|e| failed(e.to_string()))?;
        info!(package = %sha256, size, path = %path.display(), "fetched a job's program from the head");
        Ok(())
    }
}

/// Whether `name` can name a package: a sha256 in hex (the cache's file names).
pub fn is_package_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Marks a cached package as just used, so the node's file retention
/// (`node_files`) keeps it.
fn touch(path: &Path) {
    // Read-only: a running executable cannot be opened for writing.
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}
