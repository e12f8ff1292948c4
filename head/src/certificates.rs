//! The session CA of `photon start --head --tls auto`: made once per session
//! directory, it signs the head node's certificate and those of the raylets
//! that join (`IssueNodeCertificate`, which only a caller with the token and
//! a TLS channel verified against this CA reaches).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The directory of a session (or a node) that holds its TLS files.
pub const SESSION_TLS_DIR: &str = "tls";
/// The CA certificate's file in a session's `tls` directory.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// This node's certificate (and key, `node.key`) in a `tls` directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// This node's private key in a `tls` directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Certificates and keys, as PEM text.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate.
    pub certificate_pem: String,
    /// Its private key.
    pub private_key_pem: String,
}

/// A CA whose key this head holds.
pub struct CertificateAuthority {
    key: KeyPair,
    certificate_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateAuthority")
    }
}

/// The CA's own parameters. They are the same every time, so the CA can
/// sign again from its stored key after a restart: a certificate names its
/// issuer by this name and is verified with the CA certificate's key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Photon");
    name.push(DnType::CommonName, "Photon session CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn tls_error(what: &str, err: impl std::fmt::Display) -> String {
    format!("{what}: {err}")
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    photon_proto::files::write_private(path, contents.as_bytes())
}

impl CertificateAuthority {
    /// The CA stored in `dir` (a session's `tls` directory), made and
    /// stored (0600) the first time.
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        photon_proto::files::create_private_dir(dir)?;
        let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        if key_path.exists() {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .map_err(|err| format!("cannot read {}: {err}", path.display()))
            };
            let key = KeyPair::from_pem(&read(&key_path)?)
                .map_err(|err| tls_error(&format!("{} is not a key", key_path.display()), err))?;
            return Ok(Self {
                key,
                certificate_pem: read(&cert_path)?,
            });
        }
        let key = KeyPair::generate().map_err(|err| tls_error("cannot make the CA key", err))?;
        let certificate = ca_params()
            .self_signed(&key)
            .map_err(|err| tls_error("cannot make the CA certificate", err))?;
        let authority = Self {
            certificate_pem: certificate.pem(),
            key,
        };
        write_private(&key_path, &authority.key.serialize_pem())?;
        write_private(&cert_path, &authority.certificate_pem)?;
        Ok(authority)
    }

    /// The CA certificate (PEM), what peers verify against.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A certificate for a node reached at `hosts` (IP addresses or DNS
    /// names), with a fresh key.
    pub fn issue(&self, hosts: &[String]) -> Result<IssuedCertificate, String> {
        if hosts.is_empty() {
            return Err("a node certificate needs at least one host".into());
        }
        let mut params = CertificateParams::new(hosts.to_vec())
            .map_err(|err| tls_error(&format!("hosts {hosts:?}"), err))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Photon node {}", hosts[0]));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2125, 1, 1);
        let key = KeyPair::generate().map_err(|err| tls_error("cannot make a node key", err))?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let certificate = params
            .signed_by(&key, &issuer)
            .map_err(|err| tls_error("cannot sign the node certificate", err))?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `hosts` and stores it with its key (0600)
    /// in `dir`, next to a copy of the CA certificate: the files a node's
    /// processes load.
    pub fn issue_into(&self, hosts: &[String], dir: &Path) -> Result<(), String> {
        let issued = self.issue(hosts)?;
        store_node_files(dir, self.certificate_pem(), &issued)
    }
}

/// Writes a node's CA copy, certificate and key into `dir` (created).
pub fn store_node_files(
    dir: &Path,
    ca_pem: &str,
    issued: &IssuedCertificate,
) -> Result<(), String> {
    photon_proto::files::create_private_dir(dir)?;
    if std::fs::read_to_string(dir.join(CA_FILE)).ok().as_deref() != Some(ca_pem) {
        write_private(&dir.join(CA_FILE), ca_pem)?;
    }
    write_private(&dir.join(NODE_CERT_FILE), &issued.certificate_pem)?;
    write_private(&dir.join(NODE_KEY_FILE), &issued.private_key_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.certificate_pem(), again.certificate_pem());
        let issued = again.issue(&["10.1.2.3".into()]).unwrap();
        let verify = |host: &str| {
            use tokio_rustls::rustls::client::WebPkiServerVerifier;
            use tokio_rustls::rustls::client::danger::ServerCertVerifier;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(first.certificate_pem().as_bytes()).unwrap())
                .unwrap();
            let verifier = WebPkiServerVerifier::builder(roots.into()).build().unwrap();
            let leaf = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).unwrap();
            verifier.verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(host.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        // Signed by the reloaded CA, verified against the first one's certificate.
        verify("10.1.2.3").unwrap();
        let other = verify("10.1.2.4").unwrap_err();
        assert!(other.to_string().contains("not valid for name"), "{other}");
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert!(
            CertificateAuthority::load_or_create(dir.path())
                .unwrap()
                .issue(&[])
                .is_err()
        );
    }
}
