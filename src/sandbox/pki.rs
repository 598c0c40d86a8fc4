//! A throwaway certificate authority and server certificate for the sandbox's TLS endpoints.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SandboxError;

/// A fresh CA plus one server certificate signed by it. Nothing is written to disk.
pub struct TestPki {
    pub ca_cert_pem: String,
    pub ca_cert: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    server_cert_pem: String,
    server_key_pem: String,
}

impl TestPki {
    /// A fresh CA and a server certificate signed by it for `names`; entries that parse as IP
    /// addresses become IP SANs (rustls verifies those), others DNS SANs. Use rcgen 0.14.
    pub fn generate(names: &[&str]) -> Result<TestPki, SandboxError> {
        let now = SystemTime::now();
        // Backdated so that clock differences between processes never make it "not yet valid".
        let not_before = now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now);
        let not_after = now + Duration::from_secs(2 * 365 * 86_400);

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = distinguished_name("smtp-oauth-relay sandbox CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = not_before.into();
        ca_params.not_after = not_after.into();
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = distinguished_name(names.first().copied().unwrap_or("sandbox"));
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys only sign; KeyEncipherment would be wrong for them.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &ca)?;

        Ok(TestPki {
            ca_cert_pem: ca.pem(),
            ca_cert: ca.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        self.server_key.clone_key()
    }

    /// A rustls server configuration presenting the server certificate, using the ring provider
    /// explicitly so that no process-wide default provider is needed.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, SandboxError> {
        let config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key())?;
        Ok(Arc::new(config))
    }

    /// A root store containing the CA only.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // The CA was generated just above by rcgen, so rustls accepting it is an invariant; the
        // (ignored) count of rejected certificates can only be zero.
        let _ = roots.add_parsable_certificates([self.ca_cert.clone()]);
        roots
    }

    /// A client configuration that trusts only this CA (ring provider), for tests and tools.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, SandboxError> {
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// PEM of the server cert and key, so tests can write them to files for the relay's own tls_cert/tls_key.
    pub fn server_cert_pem(&self) -> String {
        self.server_cert_pem.clone()
    }

    pub fn server_key_pem(&self) -> String {
        self.server_key_pem.clone()
    }
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field(
                "ca_cert",
                &format_args!("<{} bytes DER>", self.ca_cert.len()),
            )
            .field("server_chain_len", &self.server_chain.len())
            .field("server_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "smtp-oauth-relay sandbox");
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn handshake_succeeds_for_dns_and_ip_names() {
        let pki = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
        let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                tls.write_all(b"hi").await.unwrap();
                tls.shutdown().await.unwrap();
            }
        });
        for name in ["localhost", "127.0.0.1"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let server_name = ServerName::try_from(name).unwrap().to_owned();
            let mut tls = connector.connect(server_name, tcp).await.unwrap();
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hi");
        }
    }

    #[tokio::test]
    async fn handshake_fails_for_a_name_not_in_the_certificate() {
        let pki = TestPki::generate(&["localhost"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
        let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_name = ServerName::try_from("smtp.gmail.com").unwrap().to_owned();
        assert!(connector.connect(server_name, tcp).await.is_err());
    }

    #[test]
    fn pem_outputs_parse_and_debug_hides_the_key() {
        let pki = TestPki::generate(&["localhost"]).unwrap();
        assert!(pki.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki
            .server_cert_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki
            .server_key_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(pki.root_store().len(), 1);
        let debug = format!("{pki:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains("<redacted>"));
    }
}
