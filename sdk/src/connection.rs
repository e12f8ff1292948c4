//! The connection file: everything another machine needs to reach a
//! cluster, in one file its head writes to its session dir (0600): the
//! head's address, the token and, with TLS, the CA certificate. The head
//! rewrites it on every start, so it also says whether the head of a
//! session dir on this machine uses TLS now.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A head's connection file.
#[derive(Clone, Serialize, Deserialize)]
pub struct ConnectionFile {
    /// The head's advertised address.
    pub address: String,
    /// The cluster token.
    pub token: String,
    /// The CA certificate (PEM) of a cluster that uses TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

impl std::fmt::Debug for ConnectionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionFile")
            .field("address", &self.address)
            .field("token", &"…")
            .field("tls", &self.ca_certificate.is_some())
            .finish()
    }
}

impl ConnectionFile {
    /// Its name in a head's session dir.
    pub const NAME: &str = "connection.json";

    /// Reads `path`; errors name it.
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = fs::read(path)
            .map_err(|err| format!("cannot read the connection file {}: {err}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|err| {
            format!(
                "{} is not a photon connection file (a head's session dir has `{}`): {err}",
                path.display(),
                Self::NAME
            )
        })
    }

    /// The connection file of the head whose session dir is `dir`, if it
    /// wrote one.
    pub fn of_session(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join(Self::NAME);
        if !path.exists() {
            return Ok(None);
        }
        Self::read(&path).map(Some)
    }

    /// Writes it (0600: it holds the token).
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).map_err(|err| err.to_string())?;
        crate::home::write_private(path, &json)
    }

    /// The CA certificate as a file this process and its children load:
    /// `$PHOTON_HOME/tls/ca-<hash>.pem`. `None` for a plaintext cluster.
    pub fn ca_file(&self) -> Result<Option<PathBuf>, String> {
        use sha2::Digest;
        let Some(pem) = &self.ca_certificate else {
            return Ok(None);
        };
        let dir = crate::home::private_home()?.join("tls");
        crate::home::create_private_dir(&dir)?;
        let hash = hex::encode(&sha2::Sha256::digest(pem.as_bytes())[..8]);
        let path = dir.join(format!("ca-{hash}.pem"));
        if fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
            crate::home::write_private(&path, pem.as_bytes())?;
        }
        Ok(Some(path))
    }
}
