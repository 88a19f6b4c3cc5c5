//! A raw meshrpc peer: a quinn endpoint with a proper certificate of the cluster (or any
//! rustls configuration), that opens connections and streams and writes whatever bytes a test
//! wants — the hostile peer of the flood and churn tests, and the intruder of the TLS tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use meshrpc::transport::endpoint::build_endpoint;
use meshrpc::wire::{CallHeader, FrameKind, encode_frame};
use meshrpc::{Limits, Metadata, TlsMaterial};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};

/// How long a handshake may take before the attempt counts as failed.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// A client endpoint bound to `bind` (an address of the namespace the test runs in) presenting
/// `tls`, for `cluster`.
pub fn endpoint(bind: SocketAddr, tls: &TlsMaterial, cluster: &str) -> quinn::Endpoint {
    build_endpoint(bind, tls, cluster, &Limits::default()).expect("an endpoint")
}

/// A client endpoint on loopback with a fresh certificate of `cluster`'s dev CA under `state`.
pub fn member_endpoint(state: &Path, cluster: &str) -> quinn::Endpoint {
    let tls = TlsMaterial::dev(state, cluster, "raw-peer").expect("dev TLS material");
    endpoint("127.0.0.1:0".parse().expect("address"), &tls, cluster)
}

/// A client endpoint on loopback that presents exactly `config` (any certificate, any ALPN).
pub fn endpoint_with(config: rustls::ClientConfig) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(config).expect("a QUIC TLS config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Connects to `server` as a member of `cluster`; the error says how it failed.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    cluster: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(server, &format!("{cluster}.meshrpc"))
        .map_err(|error| format!("connect: {error}"))?;
    tokio::time::timeout(HANDSHAKE_WAIT, connecting)
        .await
        .map_err(|_| "no handshake within the wait".to_owned())?
        .map_err(|error| format!("handshake: {error}"))
}

/// One frame: kind, big-endian u32 length, body.
pub fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(kind, body, &mut out);
    out.to_vec()
}

/// A well-formed `greeter.greet` request for `name`.
pub fn greet_request(name: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Greet<'a> {
        name: &'a str,
    }
    let header = CallHeader {
        service: "greeter".into(),
        method: "greet".into(),
        deadline_ms: Some(5_000),
        metadata: Metadata::new(),
        sticky_key: None,
    };
    [
        frame(
            FrameKind::Call,
            &rmp_serde::to_vec_named(&header).expect("header"),
        ),
        frame(
            FrameKind::Data,
            &rmp_serde::to_vec_named(&Greet { name }).expect("payload"),
        ),
    ]
    .concat()
}

/// Sends a greet request on a new stream of `connection` and returns the reply's bytes (or
/// why there were none), within `wait`.
pub async fn greet_raw(
    connection: &quinn::Connection,
    name: &str,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&greet_request(name))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        recv.read_to_end(64 * 1024).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| format!("no reply within {wait:?}"))?
}

/// The issuer of `cluster`'s dev CA under `state` (its key and parameters).
pub fn dev_ca_issuer(state: &Path, cluster: &str) -> Issuer<'static, KeyPair> {
    let key = std::fs::read_to_string(state.join(cluster).join("ca.key")).expect("the CA key");
    let key = KeyPair::from_pem(&key).expect("the CA key parses");
    let params = meshrpc::tls::dev_ca_params(cluster).expect("the dev CA's parameters");
    Issuer::new(params, key)
}

/// A node certificate for `cluster` signed by `issuer`, valid from `not_before` to
/// `not_after` (as `(year, month, day)`): PEM certificate and key.
pub fn node_cert(
    cluster: &str,
    issuer: &Issuer<'_, KeyPair>,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (String, String) {
    let mut params = CertificateParams::new(vec![format!("{cluster}.meshrpc")]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "intruder");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}
