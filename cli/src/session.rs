//! Where `photon` keeps what other commands on this machine need to find:
//! `$PHOTON_HOME` (default `/tmp/photon`) holds `cluster.json` (the head's
//! address and token file) and `pids/` (one file per process `photon start`
//! started, for `photon stop`). Each head has a session directory (0700) with
//! its token (0600), its database and its logs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// `$PHOTON_HOME` or `/tmp/photon`.
pub fn home() -> PathBuf {
    std::env::var_os("PHOTON_HOME").map_or_else(|| PathBuf::from("/tmp/photon"), PathBuf::from)
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The session's token: reused if the session dir has one (a restarted head
/// keeps its cluster's token), else generated and stored 0600.
pub fn session_token(session_dir: &Path) -> anyhow::Result<String> {
    let path = session_dir.join("token");
    match fs::read_to_string(&path) {
        Ok(token) => Ok(token.trim().to_string()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let token = photon_proto::auth::generate_token();
            write_private(&path, token.as_bytes())?;
            Ok(token)
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot read the cluster token {}", path.display()))
        }
    }
}

/// What a head publishes for other commands on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The head's address.
    pub address: String,
    /// The head's session directory.
    pub session_dir: PathBuf,
    /// The head process.
    pub pid: u32,
}

impl ClusterFile {
    fn path() -> PathBuf {
        home().join("cluster.json")
    }

    /// Publishes this head.
    pub fn write(&self) -> anyhow::Result<()> {
        create_private_dir(&home())?;
        write_private(&Self::path(), &serde_json::to_vec_pretty(self)?)
    }

    /// The head started last on this machine, if any.
    pub fn read() -> Option<Self> {
        serde_json::from_slice(&fs::read(Self::path()).ok()?).ok()
    }

    /// Removes the file if it still names `pid`.
    pub fn remove_if_owned_by(pid: u32) {
        if Self::read().is_some_and(|file| file.pid == pid) {
            let _ = fs::remove_file(Self::path());
        }
    }
}

/// One process started by `photon start`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidFile {
    /// "head", "raylet" or "head+raylet".
    pub role: String,
    /// The process.
    pub pid: u32,
    /// What it serves, for messages.
    pub address: String,
}

impl PidFile {
    fn dir() -> PathBuf {
        home().join("pids")
    }

    fn path(pid: u32) -> PathBuf {
        Self::dir().join(format!("{pid}.json"))
    }

    /// Records this process (written once it is ready).
    pub fn write(&self) -> anyhow::Result<()> {
        create_private_dir(&Self::dir())?;
        write_private(&Self::path(self.pid), &serde_json::to_vec(self)?)
    }

    /// The record of `pid`, once that process is ready.
    pub fn read(pid: u32) -> Option<Self> {
        serde_json::from_slice(&fs::read(Self::path(pid)).ok()?).ok()
    }

    /// Every recorded process.
    pub fn all() -> Vec<Self> {
        let Ok(entries) = fs::read_dir(Self::dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Forgets `pid`.
    pub fn remove(pid: u32) {
        let _ = fs::remove_file(Self::path(pid));
    }
}

/// The cluster token: `--token`, else `PHOTON_TOKEN`, else the token of the
/// head started on this machine.
pub fn resolve_token(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = flag.or_else(|| std::env::var("PHOTON_TOKEN").ok()) {
        return Ok(token);
    }
    let Some(cluster) = ClusterFile::read() else {
        bail!(
            "no cluster token: pass --token or set PHOTON_TOKEN (the head's session dir has a `token` file)"
        );
    };
    let path = cluster.session_dir.join("token");
    let token = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the cluster token {}; pass --token or set PHOTON_TOKEN",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}

/// The head's address: `--address`, else `PHOTON_ADDRESS`, else the head
/// started on this machine.
pub fn resolve_address(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(address) = flag.or_else(|| std::env::var("PHOTON_ADDRESS").ok()) {
        return Ok(address);
    }
    ClusterFile::read().map(|c| c.address).context(
        "no cluster address: pass --address HOST:PORT or set PHOTON_ADDRESS (no head was started on this machine)",
    )
}
