//! Where `photon` keeps what other commands on this machine need to find:
//! `$PHOTON_HOME` (default `~/.photon`, private
//! to the user: see [`photon::home`]) holds `cluster.json` (the head's address
//! and token file) and `pids/` (one file per process `photon start` started,
//! for `photon stop`). Each head has a session directory (0700) with its token
//! (0600), its database and its logs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// `$PHOTON_HOME`, created 0700 if missing and refused unless it is this user's own.
pub fn home() -> anyhow::Result<PathBuf> {
    photon::home::private_home().map_err(anyhow::Error::msg)
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    photon::home::create_private_dir(dir).map_err(anyhow::Error::msg)
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    photon::home::write_private(path, contents).map_err(anyhow::Error::msg)
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
    fn path() -> anyhow::Result<PathBuf> {
        Ok(home()?.join("cluster.json"))
    }

    /// Publishes this head.
    pub fn write(&self) -> anyhow::Result<()> {
        write_private(&Self::path()?, &serde_json::to_vec_pretty(self)?)
    }

    /// The head started last on this machine, if any; an error if the home
    /// is not this user's own.
    pub fn read() -> anyhow::Result<Option<Self>> {
        let path = Self::path()?;
        Ok(fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Removes the file if it still names `pid`.
    pub fn remove_if_owned_by(pid: u32) {
        if let Ok(Some(file)) = Self::read()
            && file.pid == pid
            && let Ok(path) = Self::path()
        {
            let _ = fs::remove_file(path);
        }
    }
}

pub use photon::ConnectionFile;

/// `--connection-file`, read.
pub fn connection_file(path: Option<&Path>) -> anyhow::Result<Option<ConnectionFile>> {
    path.map(|path| ConnectionFile::read(path).map_err(anyhow::Error::msg))
        .transpose()
}

/// One process started by `photon start`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PidFile {
    /// "head", "raylet" or "head+raylet".
    pub role: String,
    /// The process.
    pub pid: u32,
    /// When it started (clock ticks since boot, `/proc/PID/stat`), so that a
    /// pid the system has since given to another process is told apart
    /// (0 in records of photon versions before it: never signalled).
    #[serde(default)]
    pub started: u64,
    /// Its executable, checked too before it is signalled.
    #[serde(default)]
    pub exe: PathBuf,
    /// What it serves, for messages.
    pub address: String,
}

impl PidFile {
    /// The record of this process.
    pub fn this_process(role: &str, address: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        Ok(Self {
            role: role.to_string(),
            pid,
            started: photon_proto::process_started(pid)
                .context("cannot read this process's start time from /proc")?,
            exe: std::env::current_exe().context("cannot read this process's executable")?,
            address: address.to_string(),
        })
    }

    /// Whether the recorded process still runs: the same pid, start time and
    /// executable (also when the binary has since been replaced on disk).
    /// Never true for pid 0 or 1.
    pub fn is_running(&self) -> bool {
        let same_exe = |exe: PathBuf| {
            exe == self.exe
                || exe.to_str().and_then(|e| e.strip_suffix(" (deleted)")) == self.exe.to_str()
        };
        self.pid > 1
            && photon_proto::process_started(self.pid) == Some(self.started)
            && fs::read_link(format!("/proc/{}/exe", self.pid)).is_ok_and(same_exe)
    }

    fn dir() -> anyhow::Result<PathBuf> {
        Ok(home()?.join("pids"))
    }

    fn path(pid: u32) -> anyhow::Result<PathBuf> {
        Ok(Self::dir()?.join(format!("{pid}.json")))
    }

    /// Records this process (written once it is ready).
    pub fn write(&self) -> anyhow::Result<()> {
        create_private_dir(&Self::dir()?)?;
        write_private(&Self::path(self.pid)?, &serde_json::to_vec(self)?)
    }

    /// The record of `pid`, once that process is ready.
    pub fn read(pid: u32) -> Option<Self> {
        serde_json::from_slice(&fs::read(Self::path(pid).ok()?).ok()?).ok()
    }

    /// Every recorded process (an unreadable record is reported and skipped).
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let Ok(entries) = fs::read_dir(Self::dir()?) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            match fs::read(entry.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            {
                Some(record) => records.push(record),
                None => eprintln!(
                    "warning: {} is not a photon pid record: ignored",
                    entry.path().display()
                ),
            }
        }
        Ok(records)
    }

    /// Forgets process `pid`, and the head it published if it was one.
    pub fn forget(pid: u32) {
        if let Ok(path) = Self::path(pid) {
            let _ = fs::remove_file(path);
        }
        ClusterFile::remove_if_owned_by(pid);
    }
}

/// The cluster token: `--token-file`, else the connection file's, else
/// `PHOTON_TOKEN`, else the token of the head started on this machine.
/// Never a flag's value: argv is visible to every user in `ps`.
pub fn resolve_token(
    token_file: Option<&Path>,
    connection: Option<&ConnectionFile>,
) -> anyhow::Result<String> {
    if let (None, Some(connection)) = (token_file, connection) {
        return Ok(connection.token.clone());
    }
    if let Some(token) = given_token(token_file)? {
        return Ok(token);
    }
    let Some(cluster) = ClusterFile::read()? else {
        bail!(
            "no cluster token: pass --token-file or set PHOTON_TOKEN (the head's session dir has a `token` file)"
        );
    };
    read_token_file(&cluster.session_dir.join("token"))
}

/// The token given to this command: `--token-file`, else `PHOTON_TOKEN`.
pub fn given_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match token_file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(std::env::var("PHOTON_TOKEN").ok().filter(|t| !t.is_empty())),
    }
}

/// The token in `path` (surrounding whitespace removed), never empty.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let token = fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the cluster token {}; pass --token-file or set PHOTON_TOKEN",
            path.display()
        )
    })?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// The head's address: `--address`, else the connection file's, else
/// `PHOTON_ADDRESS`, else the head started on this machine.
pub fn resolve_address(
    flag: Option<String>,
    connection: Option<&ConnectionFile>,
) -> anyhow::Result<String> {
    let given = flag.or_else(|| connection.map(|c| c.address.clone()));
    if let Some(address) = given.or_else(|| std::env::var("PHOTON_ADDRESS").ok()) {
        return Ok(address);
    }
    ClusterFile::read()?.map(|c| c.address).context(
        "no cluster address: pass --address HOST:PORT or set PHOTON_ADDRESS (no head was started on this machine)",
    )
}
