//! TLS towards backends (per pool `tls = { ca, sni }`), verifying the backend's
//! certificate against the pool's CA file or, without one, the Mozilla roots.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::UpstreamTls as TlsSettings;

/// The one crypto provider cutover uses (ring: builds without cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A pool's TLS client: verified connections with ALPN `http/1.1`.
pub struct UpstreamTls {
    connector: TlsConnector,
    /// Overrides the name sent in SNI and checked in the certificate.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("sni", &self.sni).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn new(settings: &TlsSettings) -> Result<UpstreamTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("CA file {} holds no certificate", path.display()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| format!("CA file {}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let sni = settings
            .sni
            .as_deref()
            .map(|s| ServerName::try_from(s.to_string()).map_err(|_| format!("invalid sni name {s:?}")))
            .transpose()?;
        Ok(UpstreamTls { connector: TlsConnector::from(Arc::new(config)), sni })
    }

    /// Performs the handshake; `host` is the backend's configured host name,
    /// used when no `sni` is set.
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid server name {host}"))
            })?,
        };
        self.connector.connect(name, tcp).await
    }
}
