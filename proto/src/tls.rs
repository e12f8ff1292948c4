//! TLS for a process's gRPC and HTTP listeners and for every call it makes.
//!
//! A process belongs to one cluster, so its transport is a process-wide
//! setting (as Ray's `RAY_USE_TLS`): either plaintext, or TLS whose peers
//! are verified against the cluster's CA, with this node's certificate
//! served by its listeners. Child processes (workers, job drivers) get the
//! same files through [`child_env`] and read them with [`Tls::from_env`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The environment variable naming the CA certificate file (PEM).
pub const CA_ENV: &str = "PHOTON_TLS_CA";
/// The environment variable naming this node's certificate chain (PEM).
pub const CERT_ENV: &str = "PHOTON_TLS_CERT";
/// The environment variable naming this node's private key (PEM).
pub const KEY_ENV: &str = "PHOTON_TLS_KEY";

/// Where a process's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs the cluster's certificates: peers are verified against it.
    pub ca: PathBuf,
    /// This node's certificate chain and key; `None` for a process that
    /// only calls (a driver, a `photon` command).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Loaded, checked TLS material.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    ca: Certificate,
    identity: Option<Identity>,
    http: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{} is not a PEM certificate file: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks `files`: every error names the file.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let ca_pem = read(&files.ca, "CA certificate")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&ca_pem, &files.ca)? {
            roots
                .add(cert)
                .map_err(|err| format!("{} is not a usable CA: {err}", files.ca.display()))?;
        }
        let (identity, http) = match &files.identity {
            None => (None, None),
            Some((cert_path, key_path)) => {
                let cert_pem = read(cert_path, "certificate")?;
                let key_pem = read(key_path, "private key")?;
                let chain = certificates(&cert_pem, cert_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
                    format!("{} is not a PEM private key: {err}", key_path.display())
                })?;
                let mut http = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|err| {
                        format!(
                            "{} and {} are not a certificate and its key: {err}",
                            cert_path.display(),
                            key_path.display()
                        )
                    })?;
                http.alpn_protocols = vec![b"http/1.1".to_vec()];
                (
                    Some(Identity::from_pem(cert_pem, key_pem)),
                    Some(Arc::new(http)),
                )
            }
        };
        Ok(Self {
            ca: Certificate::from_pem(ca_pem),
            files,
            identity,
            http,
        })
    }

    /// The TLS a parent process passed down ([`child_env`]); `None` when it
    /// passed none.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        let Some(ca) = var(CA_ENV) else {
            return Ok(None);
        };
        let identity = match (var(CERT_ENV), var(KEY_ENV)) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => return Err(format!("{CERT_ENV} and {KEY_ENV} must be set together")),
        };
        Self::load(TlsFiles {
            ca: ca.into(),
            identity,
        })
        .map(Some)
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The rustls configuration of an HTTPS listener; `None` without a
    /// certificate of this node.
    pub fn http_server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.http.clone()
    }

    fn client(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(host)
    }
}

static PROCESS_TLS: RwLock<Option<Arc<Tls>>> = RwLock::new(None);

/// Sets this process's transport: `None` is plaintext. Listeners and
/// clients made afterwards use it.
pub fn configure(tls: Option<Tls>) {
    *PROCESS_TLS.write().unwrap_or_else(|p| p.into_inner()) = tls.map(Arc::new);
}

/// This process's TLS, if it uses TLS.
pub fn current() -> Option<Arc<Tls>> {
    PROCESS_TLS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Environment for a child process of this node (a worker, a job's
/// driver), read back by [`Tls::from_env`]: this process's files, or empty
/// values when it is plaintext, so an inherited setting never applies.
pub fn child_env() -> [(&'static str, PathBuf); 3] {
    let files = current().map(|tls| tls.files.clone());
    let ca = files.as_ref().map(|f| f.ca.clone()).unwrap_or_default();
    let (cert, key) = files.and_then(|f| f.identity).unwrap_or_default();
    [(CA_ENV, ca), (CERT_ENV, cert), (KEY_ENV, key)]
}

/// The host of `host:port` (an IPv6 literal without its brackets): the name
/// a peer's certificate must carry.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// An endpoint for `address` (host:port) in this process's transport.
pub fn endpoint(address: &str) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::Endpoint;
    let invalid = |err: tonic::transport::Error| format!("address {address:?} is invalid: {err}");
    match current() {
        None => Endpoint::from_shared(format!("http://{address}")).map_err(invalid),
        Some(tls) => Endpoint::from_shared(format!("https://{address}"))
            .map_err(invalid)?
            .tls_config(tls.client(host_of(address)))
            .map_err(|err| format!("TLS for {address}: {}", describe(&err))),
    }
}

/// A gRPC server builder in this process's transport.
pub fn server() -> Result<tonic::transport::Server, String> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = current() else {
        return Ok(builder);
    };
    let identity = tls.identity.clone().ok_or_else(|| {
        "TLS is on but this process has no certificate to serve: give --tls-cert and --tls-key"
            .to_string()
    })?;
    builder
        .tls_config(ServerTlsConfig::new().identity(identity))
        .map_err(|err| format!("TLS server configuration: {}", describe(&err)))
}

/// An error with its sources, which is where TLS failures say what went wrong
/// (`transport error: … invalid peer certificate: UnknownIssuer`).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_is_the_host_without_port_or_brackets() {
        assert_eq!(host_of("10.0.0.1:6380"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:6380"), "fd00::1");
        assert_eq!(host_of("head.example:1"), "head.example");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("photon-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = Tls::load(TlsFiles {
            ca: ca.clone(),
            identity: None,
        })
        .unwrap_err();
        assert!(err.contains(&ca.display().to_string()), "{err}");
        let missing = dir.join("missing.pem");
        let err = Tls::load(TlsFiles {
            ca: missing.clone(),
            identity: None,
        })
        .unwrap_err();
        assert!(
            err.contains("cannot read the CA certificate") && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
