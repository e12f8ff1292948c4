//! Job files this node lacks, fetched from the head's content-addressed
//! package store by hash, verified, and cached; concurrent requests share
//! one download.
//!
//! - The program: a submitted job's driver runs its program from the head
//!   node's package store, so its workers name a path that exists only
//!   there (the worker environment's `PHOTON_PROGRAM_PACKAGE`).
//! - The working directory (Ray's `runtime_env` `working_dir`): a tar the
//!   worker environment's `PHOTON_WORKING_DIR_PACKAGE` names, unpacked once
//!   per node into `<hash>.d` and made the worker's directory.

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
/// Environment variable naming the content hash of a job's working
/// directory (a tar).
pub const WORKING_DIR_PACKAGE_ENV: &str = "PHOTON_WORKING_DIR_PACKAGE";
/// Set by the raylet for a worker: where the job's working directory is
/// unpacked on this node (the worker's current directory).
pub const WORKING_DIR_ENV: &str = "PHOTON_WORKING_DIR";
/// What an unpacked working directory's name adds to its package's.
const UNPACKED_SUFFIX: &str = ".d";

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

    /// Makes a worker's `program` and `env` runnable on this node: the
    /// program from the cache if this node lacks it, and the job's working
    /// directory unpacked, named in `env` as [`WORKING_DIR_ENV`].
    pub async fn prepare(
        &self,
        program: &mut String,
        env: &mut HashMap<String, String>,
    ) -> Result<(), Status> {
        if !Path::new(program.as_str()).exists()
            && let Some(sha256) = env.get(PROGRAM_PACKAGE_ENV)
        {
            let path = self.fetch(PROGRAM_PACKAGE_ENV, sha256, "program").await?;
            *program = path.display().to_string();
        }
        // A missing program without a package is left for the spawn to report.
        if let Some(sha256) = env.get(WORKING_DIR_PACKAGE_ENV).cloned() {
            let dir = self.working_dir(&sha256).await?;
            env.insert(WORKING_DIR_ENV.into(), dir.display().to_string());
        }
        Ok(())
    }

    /// The lock that serialises work on one cache entry.
    async fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.downloads
            .lock()
            .await
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The cached file of package `sha256` (`what` for messages; `env` the
    /// variable that named it), downloaded first if missing.
    async fn fetch(&self, env: &str, sha256: &str, what: &str) -> Result<PathBuf, Status> {
        if !is_package_name(sha256) {
            return Err(Status::invalid_argument(format!(
                "{env}={sha256:?} is not a sha256 in hex"
            )));
        }
        let path = self.dir.join(sha256);
        if !path.is_file() {
            let lock = self.lock_for(sha256).await;
            let _download = lock.lock().await;
            if !path.is_file() {
                self.download(sha256, &path, what).await?;
            }
        }
        touch(&path);
        Ok(path)
    }

    /// The job's working directory `sha256` unpacked on this node (once:
    /// into a temporary directory, then renamed into place).
    async fn working_dir(&self, sha256: &str) -> Result<PathBuf, Status> {
        let what = "working directory";
        let dir = self.dir.join(format!("{sha256}{UNPACKED_SUFFIX}"));
        if !dir.is_dir() {
            let archive = self.fetch(WORKING_DIR_PACKAGE_ENV, sha256, what).await?;
            let lock = self.lock_for(&format!("{sha256}{UNPACKED_SUFFIX}")).await;
            let _unpack = lock.lock().await;
            if !dir.is_dir() {
                let (cache, target) = (self.dir.clone(), dir.clone());
                tokio::task::spawn_blocking(move || unpack(&archive, &cache, &target))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| {
                        Status::failed_precondition(format!(
                            "cannot unpack the job's working directory (package {sha256}) into {}: {e}",
                            dir.display()
                        ))
                    })?;
                info!(package = %sha256, dir = %dir.display(), "unpacked a job's working directory");
            }
        }
        touch(&dir);
        Ok(dir)
    }

    async fn download(&self, sha256: &str, path: &Path, what: &str) -> Result<(), Status> {
        let failed = |problem: String| {
            Status::failed_precondition(format!(
                "cannot fetch the job's {what} (package {sha256}) from the head: {problem}"
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
        info!(package = %sha256, size, path = %path.display(), what, "fetched a job's package from the head");
        Ok(())
    }
}

/// Unpacks the tar `archive` into a fresh directory in `cache`, then renames
/// it to `target`: a worker never sees a half-unpacked directory.
/// Another raylet sharing this cache may win the rename: its directory has
/// the same content, and this one's is removed with `temp`.
fn unpack(archive: &Path, cache: &Path, target: &Path) -> std::io::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(cache)?;
    tar::Archive::new(std::fs::File::open(archive)?).unpack(temp.path())?;
    match std::fs::rename(temp.path(), target) {
        Err(_) if target.is_dir() => Ok(()),
        renamed => renamed,
    }
}

/// Whether `name` is a cache entry: a package, or a working directory
/// unpacked from one.
pub fn is_cache_entry(name: &str) -> bool {
    is_package_name(name.strip_suffix(UNPACKED_SUFFIX).unwrap_or(name))
}

/// Whether `name` can name a package: a sha256 in hex (the cache's file names).
pub fn is_package_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Marks a cached package (or unpacked directory) as just used, so the
/// node's file retention (`node_files`) keeps it.
fn touch(path: &Path) {
    // Read-only: a running executable cannot be opened for writing.
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}
