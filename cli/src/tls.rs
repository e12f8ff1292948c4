//! TLS for `photon` commands and nodes: which CA a command trusts, and
//! which certificate a node serves (`--tls auto`, or the user's own files).
//! The process-wide setting itself is [`photon_proto::tls`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use photon_head::{CA_FILE, CertificateAuthority, NODE_CERT_FILE, NODE_KEY_FILE, SESSION_TLS_DIR};
use photon_proto::tls::{Tls, TlsFiles};

use crate::session::{ClusterFile, ConnectionFile};

/// How a node makes its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// A head makes a session CA and its own certificate; a joining node
    /// gets its certificate from the head (it needs the CA: --connection-file).
    Auto,
}

/// The TLS flags of `photon start`.
#[derive(Debug, Clone, Args)]
pub struct NodeTlsArgs {
    /// TLS on every gRPC and HTTP listener with certificates photon makes.
    #[arg(long, value_enum, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls: Option<TlsMode>,
    /// This node's certificate chain (PEM), signed by the --tls-ca CA and
    /// naming the node's advertised address.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the cluster's node certificates
    /// (joining: default the connection file's, else PHOTON_TLS_CA).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

/// The CA a command that calls a cluster at `address` verifies it with:
/// `--tls-ca`, else the connection file's (a connection file without one
/// is a plaintext cluster), else PHOTON_TLS_CA, else the CA of the head
/// started on this machine when that is the one called.
pub fn client_tls(
    tls_ca: Option<&Path>,
    connection: Option<&ConnectionFile>,
    address: &str,
) -> anyhow::Result<Option<Tls>> {
    let ca = match (tls_ca, connection) {
        (Some(ca), _) => Some(ca.to_path_buf()),
        (None, Some(connection)) => connection.ca_file().map_err(anyhow::Error::msg)?,
        (None, None) => {
            if let Some(tls) = Tls::from_env().map_err(anyhow::Error::msg)? {
                return Ok(Some(tls));
            }
            local_session_ca(address)?
        }
    };
    ca.map(|ca| Tls::load(TlsFiles { ca, identity: None }).map_err(anyhow::Error::msg))
        .transpose()
}

/// Configures this process to call the cluster at `address` (see [`client_tls`]).
pub fn configure_client(
    tls_ca: Option<&Path>,
    connection: Option<&ConnectionFile>,
    address: &str,
) -> anyhow::Result<()> {
    photon_proto::tls::configure(client_tls(tls_ca, connection, address)?);
    Ok(())
}

/// The CA of the head started on this machine, when it is the one at
/// `address` and uses TLS now (its connection file says so).
fn local_session_ca(address: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(cluster) = ClusterFile::read()?.filter(|cluster| cluster.address == address) else {
        return Ok(None);
    };
    let connection =
        ConnectionFile::of_session(&cluster.session_dir).map_err(anyhow::Error::msg)?;
    match connection {
        Some(connection) => connection.ca_file().map_err(anyhow::Error::msg),
        None => Ok(None),
    }
}

/// What the connect error adds when this process called in plaintext: the
/// likeliest cause on a network is a cluster that wants TLS.
pub fn plaintext_hint() -> &'static str {
    if photon_proto::tls::current().is_some() {
        ""
    } else {
        " (a cluster that uses TLS needs its CA: --connection-file or --tls-ca)"
    }
}

fn node_files(dir: &Path, ca: PathBuf) -> TlsFiles {
    TlsFiles {
        ca,
        identity: Some((dir.join(NODE_CERT_FILE), dir.join(NODE_KEY_FILE))),
    }
}

fn load(files: TlsFiles) -> anyhow::Result<Tls> {
    Tls::load(files).map_err(anyhow::Error::msg)
}

/// A head node's TLS, made in its session dir's `tls` directory: with
/// `--tls auto` a certificate for `hosts` signed by the session CA (made
/// once, kept across restarts), which is returned to issue joining nodes
/// theirs; else the given files. (Local commands find the CA in the
/// session's connection file.)
pub fn head_node(
    args: &NodeTlsArgs,
    session_dir: &Path,
    hosts: &[String],
) -> anyhow::Result<(Option<Tls>, Option<Arc<CertificateAuthority>>)> {
    let dir = session_dir.join(SESSION_TLS_DIR);
    if args.tls == Some(TlsMode::Auto) {
        if args.tls_ca.is_some() {
            bail!(
                "--tls auto makes the session's CA: drop --tls-ca, or give --tls-cert and --tls-key instead of --tls auto"
            );
        }
        let authority = CertificateAuthority::load_or_create(&dir).map_err(anyhow::Error::msg)?;
        authority
            .issue_into(hosts, &dir)
            .map_err(anyhow::Error::msg)?;
        let tls = load(node_files(&dir, dir.join(CA_FILE)))?;
        return Ok((Some(tls), Some(Arc::new(authority))));
    }
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if args.tls_ca.is_some() {
            bail!(
                "--tls-ca on a head needs its certificate: give --tls-cert and --tls-key, or use --tls auto"
            );
        }
        return Ok((None, None));
    };
    let ca = args
        .tls_ca
        .clone()
        .context("--tls-cert needs --tls-ca, the CA that signed it (nodes and commands verify the head with it)")?;
    let tls = load(TlsFiles {
        ca,
        identity: Some((cert.clone(), key.clone())),
    })?;
    Ok((Some(tls), None))
}

/// A joining node's TLS: the CA from `--tls-ca`, the connection file,
/// PHOTON_TLS_CA or the head started on this machine; the certificate from `--tls-cert`/`--tls-key`, else issued
/// by the head for `hosts` and stored in `dir`. `None`: plaintext.
pub async fn joining_node(
    args: &NodeTlsArgs,
    connection: Option<&ConnectionFile>,
    head: &str,
    token: &str,
    hosts: &[String],
    dir: &Path,
) -> anyhow::Result<Option<Tls>> {
    let ca = match (&args.tls_ca, connection) {
        (Some(ca), _) => Some(ca.clone()),
        (None, Some(connection)) => connection.ca_file().map_err(anyhow::Error::msg)?,
        (None, None) => match std::env::var_os(photon_proto::tls::CA_ENV) {
            Some(ca) if !ca.is_empty() => Some(PathBuf::from(ca)),
            _ => local_session_ca(head)?,
        },
    };
    let Some(ca) = ca else {
        if args.tls.is_some() || args.tls_cert.is_some() {
            bail!(
                "TLS needs the cluster's CA: give --connection-file (the head's session dir has `{}`) or --tls-ca",
                ConnectionFile::NAME
            );
        }
        return Ok(None);
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return load(TlsFiles {
            ca,
            identity: Some((cert.clone(), key.clone())),
        })
        .map(Some);
    }
    photon_proto::tls::configure(Some(load(TlsFiles {
        ca: ca.clone(),
        identity: None,
    })?));
    let issued = issue_from_head(head, token, hosts).await?;
    photon_head::store_node_files(
        dir,
        &issued.ca_certificate_pem,
        &photon_head::IssuedCertificate {
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
        },
    )
    .map_err(anyhow::Error::msg)?;
    load(node_files(dir, dir.join(CA_FILE))).map(Some)
}

async fn issue_from_head(
    head: &str,
    token: &str,
    hosts: &[String],
) -> anyhow::Result<photon_proto::v1::IssueNodeCertificateReply> {
    let endpoint = photon_proto::tls::endpoint(head)
        .map_err(anyhow::Error::msg)?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|err| {
        anyhow::anyhow!(
            "cannot reach the head at {head} over TLS for this node's certificate: {}",
            photon_proto::tls::describe(&err)
        )
    })?;
    let attach = photon_proto::auth::AttachToken::new(token).map_err(anyhow::Error::msg)?;
    let mut client = photon_proto::v1::head_client::HeadClient::with_interceptor(channel, attach);
    let reply = client
        .issue_node_certificate(photon_proto::v1::IssueNodeCertificateRequest {
            hosts: hosts.to_vec(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "the head at {head} did not issue this node a certificate: {}",
                status.message()
            )
        })?;
    Ok(reply.into_inner())
}

/// The names a node's certificate carries: where other nodes reach it, and
/// loopback, where its own processes and local commands do.
pub fn node_hosts(advertised: &str, bound: &str) -> Vec<String> {
    let specific_bind = bound
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_unspecified());
    let mut hosts: Vec<String> = Vec::new();
    for host in [
        advertised,
        if specific_bind { bound } else { advertised },
        "127.0.0.1",
        "::1",
        "localhost",
    ] {
        if !hosts.iter().any(|known| known == host) {
            hosts.push(host.to_string());
        }
    }
    hosts
}
