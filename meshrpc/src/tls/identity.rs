//! Service identity in certificates: a node certificate names its node as the subjectAltName
//! URI `meshrpc://<cluster>/<name>`, and a node reads that name off a verified peer certificate
//! to decide who is calling ([`peer_identity`]).
//!
//! The name is only read from certificates the TLS layer has already verified (chained to the
//! cluster CA, issued for `<cluster>.meshrpc`), so the small DER walk below never sees a
//! certificate a peer could forge; it still refuses anything malformed instead of guessing.

use rustls::pki_types::CertificateDer;

use crate::server::call::PeerIdentity;

/// The scheme of identity URIs: `meshrpc://<cluster>/<name>`.
pub const IDENTITY_SCHEME: &str = "meshrpc://";

/// The longest node name an identity URI may carry.
pub const MAX_IDENTITY_NAME: usize = 128;

/// Whether `name` can be a node's identity: 1 to [`MAX_IDENTITY_NAME`] ASCII letters, digits,
/// `-`, `_` and `.`, so it fits in a URI unescaped and in a policy rule unquoted.
pub fn is_identity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTITY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The identity URI of node `name` in `cluster`, as its certificate carries it.
///
/// ```
/// assert_eq!(meshrpc::tls::identity_uri("default", "concierge"), "meshrpc://default/concierge");
/// ```
pub fn identity_uri(cluster: &str, name: &str) -> String {
    format!("{IDENTITY_SCHEME}{cluster}/{name}")
}

/// The identity a verified peer of `connection` proves, if its certificate names one for
/// `cluster` (the node's own cluster).
///
/// `None` when the peer's leaf certificate has no `meshrpc://<cluster>/<name>` URI, names only
/// other clusters, carries a malformed one, or names two different identities of `cluster`
/// (which a CA should never issue; such a certificate proves no single name).
pub fn peer_identity(connection: &quinn::Connection, cluster: &str) -> Option<PeerIdentity> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certificate_identity(chain.first()?, cluster)
}

/// The identity `certificate` names for `cluster` (see [`peer_identity`]). The certificate is
/// not verified here: call this only on certificates the TLS handshake accepted.
pub fn certificate_identity(
    certificate: &CertificateDer<'_>,
    cluster: &str,
) -> Option<PeerIdentity> {
    let mut found: Option<&str> = None;
    for uri in san_uris(certificate.as_ref())? {
        let Some(rest) = uri.strip_prefix(IDENTITY_SCHEME) else {
            continue;
        };
        let Some((uri_cluster, name)) = rest.split_once('/') else {
            continue;
        };
        if uri_cluster != cluster {
            continue;
        }
        if !is_identity_name(name) {
            return None;
        }
        match found {
            Some(earlier) if earlier != name => return None,
            _ => found = Some(name),
        }
    }
    found.map(|name| PeerIdentity {
        cluster: cluster.to_owned(),
        name: name.to_owned(),
    })
}

/// The URIs in the subjectAltName extension of a DER certificate: an empty list when it has
/// none, `None` when the certificate is not well-formed DER where this walk looks.
fn san_uris(certificate: &[u8]) -> Option<Vec<&str>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let certificate = Der::new(certificate).expect(SEQUENCE)?;
    let mut tbs = Der::new(Der::new(certificate).expect(SEQUENCE)?);
    // TBSCertificate ::= SEQUENCE { [0] version, serial, signature, issuer, validity, subject,
    // subjectPublicKeyInfo, [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions }
    let mut extensions = None;
    while let Some((tag, content)) = tbs.next()? {
        if tag == EXTENSIONS {
            extensions = Some(Der::new(content).expect(SEQUENCE)?);
        }
    }
    let mut uris = Vec::new();
    let Some(extensions) = extensions else {
        return Some(uris);
    };
    let mut extensions = Der::new(extensions);
    // Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    while let Some((tag, extension)) = extensions.next()? {
        if tag != SEQUENCE {
            return None;
        }
        let mut fields = Der::new(extension);
        if fields.expect(OID)? != SUBJECT_ALT_NAME {
            continue;
        }
        let mut value = fields.next()?;
        if matches!(value, Some((BOOLEAN, _))) {
            value = fields.next()?;
        }
        let Some((OCTET_STRING, value)) = value else {
            return None;
        };
        // GeneralNames ::= SEQUENCE OF GeneralName; uniformResourceIdentifier [6] IA5String
        let mut names = Der::new(Der::new(value).expect(SEQUENCE)?);
        while let Some((tag, name)) = names.next()? {
            if tag == URI {
                uris.push(
                    std::str::from_utf8(name)
                        .ok()
                        .filter(|uri| uri.is_ascii())?,
                );
            }
        }
    }
    Some(uris)
}

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[6] IMPLICIT IA5String`: a GeneralName's uniformResourceIdentifier.
const URI: u8 = 0x86;
/// The OID 2.5.29.17 (id-ce-subjectAltName), DER content bytes.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// A reader of consecutive DER elements (tag, length, content) with single-byte tags and
/// definite lengths, which is all a certificate's outer structure uses.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    /// The next element as (tag, content); `Some(None)` at the end, `None` when malformed.
    fn next(&mut self) -> Option<Option<(u8, &'a [u8])>> {
        let Some((&tag, rest)) = self.rest.split_first() else {
            return Some(None);
        };
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let length = match first {
            0..=0x7f => usize::from(first),
            0x81..=0x84 => {
                let (bytes, after) = rest.split_at_checked(usize::from(first & 0x7f))?;
                rest = after;
                bytes
                    .iter()
                    .fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
            }
            _ => return None,
        };
        let (content, after) = rest.split_at_checked(length)?;
        self.rest = after;
        Some(Some((tag, content)))
    }

    /// The content of the next element, which must carry `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            Some((found, content)) if found == tag => Some(content),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn certificate(sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["test.meshrpc".to_owned()]).expect("params");
        params.subject_alt_names.extend(sans);
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().clone()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().expect("ASCII URI"))
    }

    #[test]
    fn the_identity_uri_of_the_cluster_names_the_node() {
        let cert = certificate(vec![
            uri("spiffe://example.org/x"),
            uri("meshrpc://test/concierge"),
        ]);
        assert_eq!(
            certificate_identity(&cert, "test"),
            Some(PeerIdentity {
                cluster: "test".into(),
                name: "concierge".into()
            })
        );
    }

    /// Issued by OpenSSL 3.0 (`openssl x509 -req ... -extfile`) with `subjectAltName = critical,
    /// DNS:test.meshrpc, URI:https://example.com/x, URI:meshrpc://test/payments`.
    const OPENSSL_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----
MIICLzCCAdWgAwIBAgIUNZku4tu+a2KwzNh4fiI2XDEX7tQwCgYIKoZIzj0EAwIw
OzEQMA4GA1UECgwHbWVzaHJwYzEnMCUGA1UEAwwebWVzaHJwYyBDQSBmb3IgY2x1
c3RlciBkZWZhdWx0MB4XDTI2MTIwMjE5MzUxN1oXDTI3MTIwMjE5MzUxN1owJTEQ
MA4GA1UECgwHbWVzaHJwYzERMA8GA1UEAwwIcGF5bWVudHMwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAT91jqki04hswtwHIqyKBYTd6ryHd2Zrcg8OOngeoV3XfvK
lsjuI4+22xNlGlTIUgnSJmcRP4uIoHB0Dh/dNOzCo4HMMIHJMAwGA1UdEwEB/wQC
MAAwDgYDVR0PAQH/BAQDAgeAMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcD
AjBKBgNVHREBAf8EQDA+ggx0ZXN0Lm1lc2hycGOGFWh0dHBzOi8vZXhhbXBsZS5j
b20veIYXbWVzaHJwYzovL3Rlc3QvcGF5bWVudHMwHQYDVR0OBBYEFI4Y+Wr37Qao
U75Yop9Ry0NXldIyMB8GA1UdIwQYMBaAFBj2bxEalTHSsZUxTn8CcEzCaRnxMAoG
CCqGSM49BAMCA0gAMEUCIGga5gBigCBQ/Q3AohT/U2hvQFF5AEWpvnwA8Ej8yKQH
AiEAzxTBFg+SRvSGfWeVje3AHgHD8W3gxMEyS7Y03QSa+3I=
-----END CERTIFICATE-----
";

    #[test]
    fn a_certificate_issued_by_openssl_with_a_critical_san_names_its_node() {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(OPENSSL_CERTIFICATE.as_bytes()).expect("PEM");
        assert_eq!(
            certificate_identity(&cert, "test").map(|identity| identity.name),
            Some("payments".to_owned())
        );
    }

    #[test]
    fn a_certificate_without_the_uri_or_for_another_cluster_names_no_one() {
        assert_eq!(certificate_identity(&certificate(vec![]), "test"), None);
        let other = certificate(vec![uri("meshrpc://other/concierge")]);
        assert_eq!(certificate_identity(&other, "test"), None);
    }

    #[test]
    fn two_names_or_a_malformed_name_prove_nothing() {
        let two = certificate(vec![uri("meshrpc://test/a"), uri("meshrpc://test/b")]);
        assert_eq!(certificate_identity(&two, "test"), None);
        let same_twice = certificate(vec![uri("meshrpc://test/a"), uri("meshrpc://test/a")]);
        assert_eq!(
            certificate_identity(&same_twice, "test").map(|identity| identity.name),
            Some("a".to_owned())
        );
        for bad in [
            "meshrpc://test/",
            "meshrpc://test/a/b",
            "meshrpc://test/a%20b",
        ] {
            let cert = certificate(vec![uri(bad)]);
            assert_eq!(certificate_identity(&cert, "test"), None, "{bad}");
        }
    }

    #[test]
    fn damaged_der_yields_no_identity_and_no_panic() {
        let cert = certificate(vec![uri("meshrpc://test/concierge")]);
        let bytes = cert.as_ref();
        for end in 0..bytes.len() {
            assert_eq!(san_uris(&bytes[..end]), None, "truncated at {end}");
        }
        let mut flipped = bytes.to_vec();
        for index in 0..flipped.len() {
            flipped[index] ^= 0xff;
            let _ = certificate_identity(&CertificateDer::from(flipped.as_slice()), "test");
            flipped[index] ^= 0xff;
        }
    }

    #[test]
    fn identity_names_fit_a_uri_unescaped() {
        for good in [
            "concierge",
            "mesh-api",
            "billing_v2",
            "a.b",
            &"x".repeat(128),
        ] {
            assert!(is_identity_name(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "*", "a,b", &"x".repeat(129)] {
            assert!(!is_identity_name(bad), "{bad}");
        }
    }
}
