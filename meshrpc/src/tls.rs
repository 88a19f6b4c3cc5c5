//! Mutual TLS for the mesh: every node presents a certificate signed by the cluster CA and
//! verifies its peer's, in both directions.
//!
//! A node certificate names its cluster as the DNS name `<cluster>.meshrpc` (see
//! [`cluster_server_name`]); a peer whose certificate was issued for another cluster is refused
//! even when both share a CA. With no material configured, `TlsMaterial::dev` (feature `dev-ca`,
//! on by default) mints a development CA into a state directory once and signs a fresh node
//! certificate with it at each start, so every local process of one cluster trusts the others
//! with no setup.
//!
//! A node certificate also names the node itself, as the URI `meshrpc://<cluster>/<name>`
//! (see [`identity`]): the identity a node's authorization policy decides on.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as TlsName, RootCertStore, SignatureScheme};

#[cfg(feature = "dev-ca")]
mod dev;
pub mod identity;

#[cfg(feature = "dev-ca")]
pub use dev::{dev_ca_key_path, dev_ca_params};
pub use identity::{certificate_identity, identity_uri, is_identity_name, peer_identity};

/// PEM text and where it came from (a file, or the part it plays), for error messages.
struct Pem<'a> {
    source: &'a Path,
    text: &'a [u8],
}

impl<'a> Pem<'a> {
    fn new(source: &'a Path, text: &'a [u8]) -> Pem<'a> {
        Pem { source, text }
    }

    fn error(&self, what: impl Into<String>) -> TlsError {
        TlsError::Pem {
            path: self.source.to_owned(),
            what: what.into(),
        }
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(self.text)
            .collect::<Result<_, _>>()
            .map_err(|error| self.error(format!("unreadable PEM: {}", pem_problem(&error))))?;
        if certs.is_empty() {
            return Err(self.error("no `BEGIN CERTIFICATE` block found; give a PEM certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.text).map_err(|error| match error {
            pem::Error::NoItemsFound => {
                self.error("no private key block found; give a PKCS#8, PKCS#1 or SEC1 PEM key")
            }
            error => self.error(format!("unreadable PEM: {}", pem_problem(&error))),
        })
    }
}

/// The ALPN protocol of meshrpc's wire format, version 1.
pub const ALPN: &[u8] = b"meshrpc/1";

/// Environment variable naming the directory that holds the development CA.
pub const STATE_DIR_ENV: &str = "MESHRPC_STATE_DIR";

/// What went wrong while preparing TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file (or a description of the source).
        path: PathBuf,
        /// What was missing or wrong, and what to provide instead.
        what: String,
    },
    /// Minting a certificate failed.
    #[error("could not mint a certificate: {0}")]
    #[cfg(feature = "dev-ca")]
    Mint(#[from] rcgen::Error),
    /// No TLS material was given, and the development CA is not compiled in.
    #[cfg(not(feature = "dev-ca"))]
    #[error(
        "no TLS material: give the node its certificates (NodeBuilder::tls, or --ca/--cert/--key), \
         or enable meshrpc's `dev-ca` feature for a development CA"
    )]
    NoMaterial,
    /// rustls rejected the material.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The cluster name cannot be used in a certificate.
    #[error(
        "cluster name `{0}` is not usable: use 1 to 63 lowercase letters, digits and dashes, \
         e.g. `default` or `shop-prod`"
    )]
    ClusterName(String),
}

/// The certificates and key a node uses: the cluster CA it trusts, its own chain and key.
pub struct TlsMaterial {
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> TlsMaterial {
        TlsMaterial {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The DNS name every node certificate of `cluster` carries: `<cluster>.meshrpc`.
pub fn cluster_server_name(cluster: &str) -> Result<ServerName<'static>, TlsError> {
    check_cluster_name(cluster)?;
    ServerName::try_from(format!("{cluster}.meshrpc"))
        .map_err(|_| TlsError::ClusterName(cluster.to_owned()))
}

fn check_cluster_name(cluster: &str) -> Result<(), TlsError> {
    let valid = !cluster.is_empty()
        && cluster.len() <= 63
        && !cluster.starts_with('-')
        && !cluster.ends_with('-')
        && cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(TlsError::ClusterName(cluster.to_owned()))
    }
}

/// The default state directory: `$MESHRPC_STATE_DIR`, else `$XDG_STATE_HOME/meshrpc`, else
/// `~/.local/state/meshrpc`, else a per-user directory under the system's temporary directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("meshrpc");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(home).join(".local/state/meshrpc");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
    std::env::temp_dir().join(format!("meshrpc-{user}"))
}

impl TlsMaterial {
    /// Material from PEM files: the CA certificate(s) to trust, this node's certificate chain
    /// and its private key.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Io {
                path: path.to_owned(),
                source,
            })
        };
        TlsMaterial::parse(
            Pem::new(ca, &read(ca)?),
            Pem::new(cert, &read(cert)?),
            Pem::new(key, &read(key)?),
        )
    }

    /// Material from PEM text (see [`TlsMaterial::from_pem_files`]); errors name the parts
    /// `ca`, `cert` and `key`.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<TlsMaterial, TlsError> {
        TlsMaterial::parse(
            Pem::new(Path::new("ca"), ca),
            Pem::new(Path::new("cert"), cert),
            Pem::new(Path::new("key"), key),
        )
    }

    fn parse(ca: Pem<'_>, cert: Pem<'_>, key: Pem<'_>) -> Result<TlsMaterial, TlsError> {
        let roots = ca.certificates()?;
        let chain = cert.certificates()?;
        let key = key.private_key()?;
        Ok(TlsMaterial { roots, chain, key })
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `meshrpc/1`, client certificates
    /// required, verified against the cluster CA and the cluster name.
    pub fn server_config(&self, cluster: &str) -> Result<rustls::ServerConfig, TlsError> {
        let provider = crypto_provider();
        let roots = Arc::new(self.root_store()?);
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        let verifier = Arc::new(ClusterClientVerifier {
            inner,
            cluster_name: cluster_server_name(cluster)?,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No 0-RTT: early data can be replayed by whoever captured a client's first flight, and
        // a replayed call may not be idempotent.
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The rustls client configuration: TLS 1.3 only, ALPN `meshrpc/1`, this node's
    /// certificate offered, the server verified against the cluster CA. Early data stays off:
    /// calls wait for the handshake to complete.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_early_data = false;
        Ok(config)
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone())?;
        }
        Ok(store)
    }
}

/// What is wrong with a PEM file, in words (the parser's own messages print markers as bytes).
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a block has no `-----END {}-----` line; the file looks truncated",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed `-----BEGIN` line `{}`",
            String::from_utf8_lossy(line).trim()
        ),
        pem::Error::Base64Decode(error) => format!("a block's base64 body is damaged ({error})"),
        other => other.to_string(),
    }
}

/// The crypto provider meshrpc uses (ring), also installed as the process default when none is.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let provider = rustls::crypto::ring::default_provider();
    // Installing fails harmlessly when the application already chose a provider.
    let _ = provider.clone().install_default();
    Arc::new(provider)
}

/// Verifies client certificates against the CA (rustls' WebPKI verifier) and then checks that
/// the certificate was issued for this cluster.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster_name: ServerName<'static>,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[TlsName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let certificate = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|error| rustls::Error::General(format!("bad client certificate: {error}")))?;
        certificate
            .verify_is_valid_for_subject_name(&self.cluster_name)
            .map_err(|_| {
                rustls::Error::General(format!(
                    "client certificate is not issued for this cluster (expected the name {})",
                    self.cluster_name.to_str()
                ))
            })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_ca_is_minted_once_and_reused_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = TlsMaterial::dev(dir.path(), "test", "a").expect("mint");
        let second = TlsMaterial::dev(dir.path(), "test", "b").expect("reuse");
        assert_eq!(first.roots, second.roots, "both nodes trust the same CA");
        assert_ne!(
            first.chain, second.chain,
            "each node has its own certificate"
        );
        let mode = fs::metadata(dir.path().join("test/ca.key"))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        first.server_config("test").expect("server config");
        first.client_config().expect("client config");
    }

    #[test]
    fn a_dev_certificate_names_its_node_as_an_identity_of_the_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = TlsMaterial::dev(dir.path(), "test", "concierge").expect("mint");
        let identity = certificate_identity(&material.chain[0], "test").expect("identity");
        assert_eq!(identity.to_string(), "meshrpc://test/concierge");
        assert_eq!(certificate_identity(&material.chain[0], "other"), None);
    }

    #[test]
    fn a_node_name_that_cannot_be_an_identity_gets_a_certificate_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = TlsMaterial::dev(dir.path(), "test", "my node").expect("mint");
        assert_eq!(certificate_identity(&material.chain[0], "test"), None);
        material
            .server_config("test")
            .expect("still a usable node certificate");
    }

    #[test]
    fn neither_side_offers_or_accepts_early_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = TlsMaterial::dev(dir.path(), "test", "a").expect("mint");
        let server = material.server_config("test").expect("server config");
        assert_eq!(server.max_early_data_size, 0, "0-RTT data can be replayed");
        let client = material.client_config().expect("client config");
        assert!(!client.enable_early_data);
    }

    #[test]
    fn cluster_names_must_fit_in_a_dns_label() {
        assert!(cluster_server_name("shop-prod").is_ok());
        for bad in ["", "Shop", "a_b", "-a", "a.b", &"x".repeat(64)] {
            let error = cluster_server_name(bad).expect_err(bad);
            assert!(error.to_string().contains("lowercase letters"), "{error}");
        }
    }

    #[test]
    fn a_truncated_pem_file_is_named_and_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        TlsMaterial::dev(dir.path(), "test", "a").expect("mint");
        let ca = dir.path().join("test/ca.pem");
        let key = dir.path().join("test/ca.key");
        let text = fs::read_to_string(&ca).expect("CA");
        let truncated = dir.path().join("truncated.pem");
        fs::write(&truncated, &text[..text.len() / 2]).expect("write");
        let error = TlsMaterial::from_pem_files(&ca, &truncated, &key).expect_err("truncated");
        let message = error.to_string();
        assert!(
            message.starts_with(&truncated.display().to_string()),
            "{message}"
        );
        assert!(message.contains("unreadable PEM"), "{message}");
        assert!(message.contains("-----END CERTIFICATE-----"), "{message}");
    }

    #[test]
    fn a_missing_or_keyless_pem_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        TlsMaterial::dev(dir.path(), "test", "a").expect("mint");
        let ca = dir.path().join("test/ca.pem");
        let missing = dir.path().join("missing.pem");
        let error = TlsMaterial::from_pem_files(&ca, &ca, &missing).expect_err("missing");
        assert!(
            matches!(error, TlsError::Io { ref path, .. } if *path == missing),
            "{error}"
        );
        let error = TlsMaterial::from_pem_files(&ca, &ca, &ca).expect_err("no key");
        let message = error.to_string();
        assert!(message.starts_with(&ca.display().to_string()), "{message}");
        assert!(message.contains("no private key block found"), "{message}");
    }

    #[test]
    fn pem_without_a_certificate_names_what_is_missing() {
        let error = TlsMaterial::from_pem(b"", b"", b"").expect_err("empty");
        assert!(error.to_string().contains("BEGIN CERTIFICATE"), "{error}");
    }
}
