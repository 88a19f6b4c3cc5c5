//! Service identity over real QUIC connections: each side of a mesh connection reads the other's
//! name off its verified certificate (`meshrpc://<cluster>/<name>`), a certificate of another CA
//! claiming a member's name never gets that far, and a cluster certificate without the URI
//! proves no name.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshrpc::TlsMaterial;
use meshrpc::tls::{dev_ca_params, peer_identity};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

const CLUSTER: &str = "authz";

/// Every handshake in these tests ends well within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both ends of one connection, or why the handshake failed (the server's error first, since
/// the server decides on client certificates).
struct Pair {
    /// The server's side: its peer is the client.
    server: quinn::Connection,
    /// The client's side: its peer is the server.
    client: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// Connects a client with `client` material to a server with `server` material, both on
/// 127.0.0.1, as nodes of `CLUSTER` do.
async fn connect(server: &TlsMaterial, client: &TlsMaterial) -> Result<Pair, String> {
    let server_tls = QuicServerConfig::try_from(server.server_config(CLUSTER).expect("server TLS"))
        .expect("QUIC server TLS");
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    let localhost: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let server_endpoint = quinn::Endpoint::server(server_config, localhost).expect("server bind");
    let client_tls = QuicClientConfig::try_from(client.client_config().expect("client TLS"))
        .expect("QUIC client TLS");
    let mut client_endpoint = quinn::Endpoint::client(localhost).expect("client bind");
    client_endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_tls)));

    let server_addr = server_endpoint.local_addr().expect("server address");
    let server_name = format!("{CLUSTER}.meshrpc");
    let accepting = async {
        let incoming = server_endpoint.accept().await.ok_or("endpoint closed")?;
        incoming.await.map_err(|error| error.to_string())
    };
    let connecting = async {
        let connecting = client_endpoint
            .connect(server_addr, &server_name)
            .map_err(|error| error.to_string())?;
        connecting.await.map_err(|error| error.to_string())
    };
    let (accepted, connected) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        tokio::join!(accepting, connecting)
    })
    .await
    .map_err(|_| "the handshake did not finish in time".to_owned())?;
    let server_side = accepted.map_err(|error| format!("server: {error}"))?;
    let client_side = connected.map_err(|error| format!("client: {error}"))?;
    Ok(Pair {
        server: server_side,
        client: client_side,
        _endpoints: (server_endpoint, client_endpoint),
    })
}

/// The cluster's development CA, as a node minted it into `state`.
fn cluster_ca(state: &Path) -> (Issuer<'static, KeyPair>, Vec<u8>) {
    let dir = state.join(CLUSTER);
    let key = std::fs::read_to_string(dir.join("ca.key")).expect("CA key");
    let key = KeyPair::from_pem(&key).expect("CA key PEM");
    let params = dev_ca_params(CLUSTER).expect("CA parameters");
    let pem = std::fs::read(dir.join("ca.pem")).expect("CA certificate");
    (Issuer::new(params, key), pem)
}

/// PEM certificate and key for `<cluster>.meshrpc` with `uris` as further SANs, for both
/// ends of mutual TLS, signed by `issuer`.
fn node_certificate(issuer: &Issuer<'_, KeyPair>, uris: &[&str]) -> (String, String) {
    let mut params =
        CertificateParams::new(vec![format!("{CLUSTER}.meshrpc")]).expect("parameters");
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*uri).try_into().expect("ASCII URI")));
    }
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn name(identity: Option<impl std::fmt::Display>) -> Option<String> {
    identity.map(|identity| identity.to_string())
}

#[tokio::test]
async fn each_side_of_a_connection_reads_the_other_sides_name_from_its_certificate() {
    let state = tempfile::tempdir().expect("tempdir");
    let greeter = TlsMaterial::dev(state.path(), CLUSTER, "greeter").expect("greeter material");
    let concierge =
        TlsMaterial::dev(state.path(), CLUSTER, "concierge").expect("concierge material");
    let pair = connect(&greeter, &concierge).await.expect("handshake");
    assert_eq!(
        name(peer_identity(&pair.server, CLUSTER)),
        Some("meshrpc://authz/concierge".to_owned()),
        "the server knows who calls"
    );
    assert_eq!(
        name(peer_identity(&pair.client, CLUSTER)),
        Some("meshrpc://authz/greeter".to_owned()),
        "the client knows whom it called"
    );
    assert_eq!(
        name(peer_identity(&pair.server, "other")),
        None,
        "an identity of this cluster is no identity in another"
    );
}

#[tokio::test]
async fn a_certificate_of_another_ca_claiming_a_members_name_is_refused_at_the_handshake() {
    let state = tempfile::tempdir().expect("tempdir");
    let greeter = TlsMaterial::dev(state.path(), CLUSTER, "greeter").expect("greeter material");
    let (_, cluster_ca_pem) = cluster_ca(state.path());
    // A CA of the same shape and name as the cluster's, but another key: it signs a certificate
    // that claims to be the concierge.
    let forger = Issuer::new(
        dev_ca_params(CLUSTER).expect("CA parameters"),
        KeyPair::generate().expect("forger key"),
    );
    let (cert, key) = node_certificate(&forger, &["meshrpc://authz/concierge"]);
    // The forger trusts the real CA, so only the server's check can stop it.
    let forged = TlsMaterial::from_pem(&cluster_ca_pem, cert.as_bytes(), key.as_bytes())
        .expect("forged material");
    let error = match connect(&greeter, &forged).await {
        Ok(_) => panic!("a certificate of another CA was accepted"),
        Err(error) => error,
    };
    assert!(
        error.starts_with("server: ") && error.contains("invalid peer certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn a_cluster_certificate_without_the_uri_proves_no_name() {
    let state = tempfile::tempdir().expect("tempdir");
    let greeter = TlsMaterial::dev(state.path(), CLUSTER, "greeter").expect("greeter material");
    let (ca, ca_pem) = cluster_ca(state.path());
    let (cert, key) = node_certificate(&ca, &[]);
    let anonymous =
        TlsMaterial::from_pem(&ca_pem, cert.as_bytes(), key.as_bytes()).expect("material");
    let pair = connect(&greeter, &anonymous)
        .await
        .expect("a member without a name still joins");
    assert_eq!(name(peer_identity(&pair.server, CLUSTER)), None);
    assert_eq!(
        name(peer_identity(&pair.client, CLUSTER)),
        Some("meshrpc://authz/greeter".to_owned())
    );
}

#[tokio::test]
async fn a_cluster_certificate_naming_another_cluster_or_two_names_proves_no_name() {
    let state = tempfile::tempdir().expect("tempdir");
    let greeter = TlsMaterial::dev(state.path(), CLUSTER, "greeter").expect("greeter material");
    let (ca, ca_pem) = cluster_ca(state.path());
    for uris in [
        &["meshrpc://other/concierge"][..],
        &["meshrpc://authz/concierge", "meshrpc://authz/payments"][..],
    ] {
        let (cert, key) = node_certificate(&ca, uris);
        let material =
            TlsMaterial::from_pem(&ca_pem, cert.as_bytes(), key.as_bytes()).expect("material");
        let pair = connect(&greeter, &material).await.expect("handshake");
        assert_eq!(name(peer_identity(&pair.server, CLUSTER)), None, "{uris:?}");
    }
}
