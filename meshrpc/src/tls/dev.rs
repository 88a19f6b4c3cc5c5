//! The development CA (feature `dev-ca`): with no material configured, a node mints its
//! cluster's CA into a state directory once and signs a fresh node certificate with it at each
//! start, so every local process of one cluster trusts the others with no setup.

use std::fs;
use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsError, TlsMaterial, check_cluster_name, identity_uri, is_identity_name};

impl TlsMaterial {
    /// Development material for `node` in `cluster`: the cluster's dev CA under `state_dir`
    /// (minted on first use, key written with mode 0600) and a node certificate signed by it,
    /// naming `<cluster>.meshrpc` and the node's identity `meshrpc://<cluster>/<node>`.
    ///
    /// A node name that cannot be an identity (see [`is_identity_name`]) gets a certificate
    /// without the URI, and a warning: the node still joins, but policies that name callers
    /// refuse its calls.
    pub fn dev(state_dir: &Path, cluster: &str, node: &str) -> Result<TlsMaterial, TlsError> {
        check_cluster_name(cluster)?;
        let dir = state_dir.join(cluster);
        fs::create_dir_all(&dir).map_err(|source| TlsError::Io {
            path: dir.clone(),
            source,
        })?;
        let (ca_params, ca_key, ca_der) = load_or_mint_dev_ca(&dir, cluster)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let node_key = KeyPair::generate()?;
        let node_cert = node_params(cluster, node)?.signed_by(&node_key, &issuer)?;
        Ok(TlsMaterial {
            roots: vec![ca_der],
            chain: vec![node_cert.der().clone()],
            key: PrivateKeyDer::try_from(node_key.serialize_der()).map_err(|what| {
                TlsError::Pem {
                    path: dir,
                    what: what.to_owned(),
                }
            })?,
        })
    }
}

/// Where `cluster`'s development CA keeps its key under `state_dir`
/// (`<state_dir>/<cluster>/ca.key`). A node that finds none there mints the CA; a tool that only
/// joins an existing mesh (such as `meshctl`) can check for it first, since a CA of its own
/// would be trusted by no one.
pub fn dev_ca_key_path(state_dir: &Path, cluster: &str) -> std::path::PathBuf {
    state_dir.join(cluster).join(CA_KEY_FILE)
}

/// The parameters of `cluster`'s development CA, as meshrpc mints it. With the CA key a node
/// left in its state directory (`<state>/<cluster>/ca.key`), they rebuild the CA's issuer, so
/// tools and tests can sign certificates of that CA.
pub fn dev_ca_params(cluster: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "meshrpc");
    name.push(
        DnType::CommonName,
        format!("meshrpc development CA for cluster {cluster}"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn node_params(cluster: &str, node: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(vec![format!("{cluster}.meshrpc")])?;
    if is_identity_name(node) {
        let uri = identity_uri(cluster, node);
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into()?));
    } else {
        tracing::warn!(
            node,
            "this node's name cannot be an identity (use 1 to {} ASCII letters, digits, `-`, `_` \
             and `.`); its certificate names no `meshrpc://{cluster}/<name>`, so policies that \
             name callers will refuse its calls",
            super::identity::MAX_IDENTITY_NAME
        );
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "meshrpc");
    name.push(DnType::CommonName, node);
    params.distinguished_name = name;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// The CA key's file name in a cluster's state directory.
const CA_KEY_FILE: &str = "ca.key";

/// Loads the cluster's dev CA from `dir`, minting it first if absent. Concurrent first starts
/// race safely: each writes to a temporary file and links it into place; losers read the winner's.
fn load_or_mint_dev_ca(
    dir: &Path,
    cluster: &str,
) -> Result<(CertificateParams, KeyPair, CertificateDer<'static>), TlsError> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join("ca.pem");
    if !key_path.exists() {
        let key = KeyPair::generate()?;
        let cert = dev_ca_params(cluster)?.self_signed(&key)?;
        // The certificate first: a reader that finds the key can rely on the certificate.
        publish_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        publish_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    }
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let key = KeyPair::from_pem(&read(&key_path)?)?;
    let cert_pem = read(&cert_path)?;
    let cert = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Pem {
            path: cert_path.clone(),
            what: format!(
                "not a PEM certificate; delete {} to mint a new development CA",
                dir.display()
            ),
        })?;
    Ok((dev_ca_params(cluster)?, key, cert))
}

/// Writes `contents` to `path` unless it exists, atomically and with `mode`.
fn publish_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}
