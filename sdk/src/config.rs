//! How a driver finds its cluster: an address (flag, `PHOTON_ADDRESS`, or the
//! cluster `photon start` published on this machine) or, with none, an
//! embedded single-node cluster inside this process.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Environment variable naming the head to connect to.
pub const ADDRESS_ENV: &str = "PHOTON_ADDRESS";
/// Environment variable holding the cluster token.
pub const TOKEN_ENV: &str = "PHOTON_TOKEN";

/// What `photon::init` connects to or starts.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The head (`host:port`); `None`: `PHOTON_ADDRESS`, else an embedded cluster.
    pub address: Option<String>,
    /// The cluster token; `None`: `PHOTON_TOKEN`, else the session dir's `token` file.
    pub token: Option<String>,
    /// The session directory of the cluster being joined (for its token), or
    /// of the embedded cluster (default: a fresh temporary directory).
    pub session_dir: Option<PathBuf>,
    /// The CA certificate (PEM file) of a cluster that uses TLS; `None`:
    /// `PHOTON_TLS_CA`, else the CA in the connection file of the session's
    /// head, else plaintext.
    pub tls_ca: Option<PathBuf>,
    /// The raylet this driver uses (`host:port`); `None`: the live node on this host.
    pub raylet_address: Option<String>,
    /// Embedded cluster: CPUs (default: detected).
    pub num_cpus: Option<f64>,
    /// Embedded cluster: GPUs (default: discovered with cudarc).
    pub num_gpus: Option<u32>,
    /// Embedded cluster: custom resources.
    pub resources: BTreeMap<String, f64>,
    /// Embedded cluster: object store bytes (default: 30% of RAM).
    pub object_store_memory: Option<u64>,
    /// Embedded cluster: a worker whose resident memory exceeds this many
    /// bytes is killed, and its tasks fail with `WorkerKilled(Oom)` (default:
    /// only when the node runs out).
    pub worker_memory_limit: Option<u64>,
    /// Tasks pushed to one leased worker before its replies come back.
    pub max_tasks_in_flight_per_worker: Option<usize>,
    /// A directory whose contents every worker of this driver starts in, on
    /// every node (Ray's `runtime_env` `working_dir`): packed here, uploaded
    /// once to the head, unpacked once per node. With it or `files`, the
    /// workers' directory is this driver's own package, in place of the
    /// working directory of a `photon job submit` that started the driver.
    pub working_dir: Option<PathBuf>,
    /// Files or directories put in the workers' directory under their own
    /// names (with `working_dir`, or alone).
    pub files: Vec<PathBuf>,
}

impl Config {
    /// The head to connect to, if any: `address`, else `PHOTON_ADDRESS`.
    pub(crate) fn resolved_address(&self) -> Option<String> {
        self.address
            .clone()
            .or_else(|| std::env::var(ADDRESS_ENV).ok())
            .filter(|a| !a.is_empty())
    }

    /// The token for a cluster at `address`.
    pub(crate) fn resolved_token(&self, address: &str) -> Result<String> {
        if let Some(token) = self.token.clone().or_else(|| std::env::var(TOKEN_ENV).ok()) {
            return Ok(token);
        }
        let session_dir = match &self.session_dir {
            Some(dir) => Some(dir.clone()),
            None => published_session(address)?,
        };
        let Some(dir) = session_dir else {
            return Err(Error::Config(format!(
                "no token for the cluster at {address}: set {TOKEN_ENV}, Config::token, or Config::session_dir (the head's session directory holds a `token` file)"
            )));
        };
        let path = dir.join("token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                Error::Config(format!(
                    "cannot read the cluster token {}: {e}; set {TOKEN_ENV} instead",
                    path.display()
                ))
            })
    }
}

impl Config {
    /// The transport for the cluster at `address`: TLS verified against
    /// `tls_ca`, else `PHOTON_TLS_CA`, else the CA in the connection file of
    /// the session's head (a head restarted without TLS rewrites it without
    /// one); `None`: plaintext.
    pub(crate) fn resolved_tls(&self, address: &str) -> Result<Option<photon_proto::tls::Tls>> {
        use photon_proto::tls::{Tls, TlsFiles};
        let ca = match &self.tls_ca {
            Some(ca) => Some(ca.clone()),
            None => {
                if let Some(tls) = Tls::from_env().map_err(Error::Config)? {
                    return Ok(Some(tls));
                }
                let session = match &self.session_dir {
                    Some(dir) => Some(dir.clone()),
                    // With the token from elsewhere, a home that is not
                    // private is not an error, only not trusted for a CA.
                    None => published_session(address).unwrap_or_else(|why| {
                        eprintln!("photon: not looking for the cluster's CA here: {why}");
                        None
                    }),
                };
                match session {
                    Some(dir) => crate::ConnectionFile::of_session(&dir)
                        .and_then(|file| file.map_or(Ok(None), |file| file.ca_file()))
                        .map_err(Error::Config)?,
                    None => None,
                }
            }
        };
        ca.map(|ca| Tls::load(TlsFiles { ca, identity: None }).map_err(Error::Config))
            .transpose()
    }
}

/// The session dir of the head `photon start` published in
/// `$PHOTON_HOME/cluster.json`, if it is `address`. A home that is not this
/// user's own is an error: it could point at anyone's head.
fn published_session(address: &str) -> Result<Option<PathBuf>> {
    let home = crate::home::home_path();
    if !home.exists() {
        return Ok(None);
    }
    crate::home::check_private(&home).map_err(Error::Config)?;
    let Some(file) = std::fs::read(home.join("cluster.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return Ok(None);
    };
    Ok(
        (file.get("address").and_then(|a| a.as_str()) == Some(address))
            .then(|| file.get("session_dir")?.as_str().map(PathBuf::from))
            .flatten(),
    )
}
