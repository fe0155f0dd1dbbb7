//! TLS for client connections: rustls with the ring provider, certificates
//! chosen by SNI, ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3.
//!
//! Certificates hot-swap: the files are re-read every [`CHECK_EVERY`] and a
//! changed pair is loaded for new handshakes (certbot-style renewals and
//! symlink swaps need no restart). A pair that fails to load keeps the last
//! good certificate, logged and counted in
//! `cutover_tls_certificate_reloads_total{result="failure"}`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertPair, ServerTls};
use crate::metrics::Metrics;
use crate::proxy::listener::TlsAccept;

/// How often certificate files are checked for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// One loaded certificate and the names it serves.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the subject alternative names; `*.x` wildcards kept as is.
    names: Vec<String>,
    /// The file contents it was loaded from, to notice changes.
    source: (Vec<u8>, Vec<u8>),
}

/// Certificates by SNI; the first configured pair is the default.
struct Resolver {
    certs: ArcSwap<Vec<Arc<Loaded>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            let exact = certs.iter().find(|c| c.names.contains(&name));
            let wildcard = || {
                certs.iter().find(|c| {
                    c.names.iter().any(|n| {
                        n.strip_prefix("*.").is_some_and(|suffix| {
                            name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                        })
                    })
                })
            };
            if let Some(found) = exact.or_else(wildcard) {
                return Some(found.key.clone());
            }
        }
        certs.first().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn load_pair(pair: &CertPair, provider: &CryptoProvider) -> Result<Loaded, String> {
    let cert_bytes =
        std::fs::read(&pair.cert).map_err(|e| format!("cannot read certificate {}: {e}", pair.cert.display()))?;
    let key_bytes = std::fs::read(&pair.key).map_err(|e| format!("cannot read key {}: {e}", pair.key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {} is not valid PEM: {e}", pair.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("certificate file {} holds no certificate", pair.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("key file {} holds no usable private key: {e}", pair.key.display()))?;
    let names = dns_names(&chain[0]).map_err(|e| format!("certificate {}: {e}", pair.cert.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!("certificate {} and key {} do not belong together: {e}", pair.cert.display(), pair.key.display())
    })?;
    Ok(Loaded { key: Arc::new(certified), names, source: (cert_bytes, key_bytes) })
}

fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("cannot parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The TLS side of the HTTPS listeners.
#[derive(Clone)]
pub struct Acceptor {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl Acceptor {
    /// Loads every certificate (any failure is a start-up error) and starts
    /// the certificate watcher.
    pub fn new(settings: &ServerTls, metrics: Arc<Metrics>) -> Result<Acceptor, String> {
        let provider = crate::proxy::tls::provider();
        let loaded = settings
            .certs
            .iter()
            .map(|pair| load_pair(pair, &provider).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = Arc::new(Resolver { certs: ArcSwap::from_pointee(loaded) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = Acceptor { acceptor: TlsAcceptor::from(Arc::new(config)), resolver };
        spawn_watcher(Arc::downgrade(&acceptor.resolver), settings.certs.clone(), provider, metrics);
        Ok(acceptor)
    }

    pub fn accept_fn(&self) -> TlsAccept {
        let acceptor = self.acceptor.clone();
        Arc::new(move |tcp| {
            let acceptor = acceptor.clone();
            Box::pin(async move { acceptor.accept(tcp).await })
        })
    }
}

/// Re-reads the certificate files every [`CHECK_EVERY`] until the resolver
/// is dropped; swaps in pairs whose files changed and load cleanly.
fn spawn_watcher(resolver: Weak<Resolver>, pairs: Vec<CertPair>, provider: Arc<CryptoProvider>, metrics: Arc<Metrics>) {
    let spawned = std::thread::Builder::new().name("cutover-certs".into()).spawn(move || {
        let mut failed: HashMap<usize, (Vec<u8>, Vec<u8>)> = HashMap::new();
        loop {
            std::thread::sleep(CHECK_EVERY);
            let Some(resolver) = resolver.upgrade() else { return };
            let current = resolver.certs.load_full();
            let mut next: Vec<Arc<Loaded>> = current.iter().cloned().collect();
            let mut changed = false;
            for (i, pair) in pairs.iter().enumerate() {
                let (Ok(cert), Ok(key)) = (std::fs::read(&pair.cert), std::fs::read(&pair.key)) else {
                    continue;
                };
                let unchanged = current.get(i).is_some_and(|c| c.source.0 == cert && c.source.1 == key);
                if unchanged || failed.get(&i) == Some(&(cert.clone(), key.clone())) {
                    continue;
                }
                match load_pair(pair, &provider) {
                    Ok(loaded) => {
                        tracing::info!(cert = %pair.cert.display(), names = ?loaded.names, "certificate reloaded");
                        metrics.tls_cert_reloads.with_label_values(&["success"]).inc();
                        failed.remove(&i);
                        if let Some(slot) = next.get_mut(i) {
                            *slot = Arc::new(loaded);
                            changed = true;
                        }
                    }
                    Err(e) => {
                        tracing::error!("certificate reload failed, the previous certificate stays in use: {e}");
                        metrics.tls_cert_reloads.with_label_values(&["failure"]).inc();
                        failed.insert(i, (cert, key));
                    }
                }
            }
            if changed {
                resolver.certs.store(Arc::new(next));
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the certificate watcher; certificates will not reload");
    }
}

/// Checks that the certificate files load, for `cutover check`.
pub fn check(settings: &ServerTls) -> Result<(), String> {
    let provider = crate::proxy::tls::provider();
    for pair in &settings.certs {
        load_pair(pair, &provider)?;
    }
    Ok(())
}
