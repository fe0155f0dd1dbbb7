//! The front door, black-box: TLS with SNI and certificate hot swap, HTTP/2
//! by ALPN and by prior knowledge (h2c), WebSocket tunnels, header limits,
//! and TLS towards backends with a private CA. Real sockets on 127.0.0.1,
//! certificates made by rcgen at test time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- certificates

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

impl Pem {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()
    }
}

fn self_signed(names: &[&str]) -> Pem {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    Pem { cert: made.cert.pem(), key: made.signing_key.serialize_pem() }
}

/// A private CA and a way to issue leaf certificates from it.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "cutover test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str]) -> Pem {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }
}

fn write_pair(dir: &Path, name: &str, pem: &Pem) {
    std::fs::write(dir.join(format!("{name}.crt")), &pem.cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pem.key).unwrap();
}

/// `[server.tls]` on 127.0.0.1:0 with the pairs `{dir}/<name>.crt|key`, in order.
fn tls_section(names: &[&str]) -> String {
    let certs: Vec<String> =
        names.iter().map(|n| format!(r#"{{ cert = "{{dir}}/{n}.crt", key = "{{dir}}/{n}.key" }}"#)).collect();
    format!("[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncerts = [{}]\n", certs.join(", "))
}

/// A proxy in front of `stable`/`canary` (weight `weight`) with a TLS
/// listener serving the pairs `names`, written to its directory first.
fn tls_proxy(stable: SocketAddr, canary: SocketAddr, weight: f64, pairs: &[(&str, &Pem)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    for (name, pem) in pairs {
        write_pair(dir.path(), name, pem);
    }
    let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
    Proxy::start_in(dir, &two_pool_config(stable, canary, weight, &tls_section(&names)))
}

fn tls_addr(proxy: &Proxy) -> SocketAddr {
    proxy.running.tls_addrs[0]
}

// ---------------------------------------------------------------- clients

/// Accepts any server certificate (tests look at which one was presented)
/// but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` sending SNI `sni` (none for an IP address)
/// and offering `alpn`.
async fn tls_connect(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(LIMIT, tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The certificate a new handshake with SNI `sni` presents.
async fn presented(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    let tls = tls_connect(addr, sni, &[b"http/1.1"]).await;
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(LIMIT, body.collect()).await.expect("body in time").expect("body").to_bytes();
    Got { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn h2_handshake<I>(io: I) -> hyper::client::conn::http2::SendRequest<Body>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn h1_handshake<I>(io: I) -> hyper::client::conn::http1::SendRequest<Body>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

fn set_cookies(got: &Got) -> Vec<String> {
    got.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

/// What an HTTP/1.1 backend must see for a request that came in over TLS.
fn assert_forwarded_over_tls(seen: &Seen) {
    assert_eq!(seen.version, http::Version::HTTP_11, "the backend speaks HTTP/1.1");
    assert_eq!(seen.headers.get_all(header::HOST).iter().collect::<Vec<_>>(), ["example.com"]);
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
    assert_eq!(seen.headers.get("x-forwarded-host").unwrap(), "example.com");
    assert_eq!(seen.uri, "/shop/cart?id=7", "origin-form target");
}

fn assert_secure_cookie(got: &Got) {
    let cookies = set_cookies(got);
    let minted = cookies.iter().find(|c| c.starts_with("cutover_id=")).expect("a first-time client gets a cookie");
    assert!(minted.ends_with("; Secure"), "TLS listener cookies are Secure: {minted}");
}

// ---------------------------------------------------------------- HTTP/2 and HTTP/1.1 over TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_by_alpn_reaches_an_http11_backend() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &self_signed(&["example.com"]))]);
    let tls = tls_connect(tls_addr(&proxy), "example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_handshake(tls).await;
    for _ in 0..2 {
        let req = Request::get("https://example.com/shop/cart?id=7").body(empty()).unwrap();
        let got = collect(h2.send_request(req).await.expect("h2 response")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.first_line(), "stable");
        assert_secure_cookie(&got);
        let seen = stable.last_seen();
        assert_forwarded_over_tls(&seen);
        assert_eq!(seen.headers.get(header::VIA).unwrap(), "2.0 cutover");
    }
    assert_eq!(stable.hits(), 2, "two streams on one connection, two backend requests");
}

/// An HTTP/2 connection (ALPN) accepted before a drain, whose first request
/// comes later than the 1 s an idle connection gets, is still answered
/// within client_header instead of getting a GOAWAY that refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_accepted_before_a_drain_keeps_client_header_for_its_first_request() {
    let app = Backend::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "site", &self_signed(&["example.com"]));
    let extra = format!("{}\n[timeouts]\nclient_header = \"5s\"\n", tls_section(&["site"]));
    let proxy = Proxy::start_in(dir, &two_pool_config(app.addr, app.addr, 0.0, &extra));
    let addr = tls_addr(&proxy);
    let tls = tls_connect(addr, "example.com", &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let Proxy { mut running, dir, .. } = proxy;
    let stopped = std::thread::spawn(move || {
        running.stop(Duration::from_secs(10));
        drop(dir);
    });
    // The drain has begun once the listener refuses connections.
    let refused = until(LIMIT, || async { TcpStream::connect(addr).await.is_err() }).await;
    assert!(refused, "the draining proxy still accepts connections");
    // Longer than an idle connection's grace, well inside client_header.
    tokio::time::sleep(cutover::proxy::listener::DRAIN_GRACE + Duration::from_millis(600)).await;

    let mut h2 = h2_handshake(tls).await;
    let req = Request::get("https://example.com/").body(empty()).unwrap();
    let resp = tokio::time::timeout(LIMIT, h2.send_request(req)).await.expect("answered in time");
    let got = collect(resp.expect("the first request is answered, not refused by a GOAWAY")).await;
    assert_eq!((got.status, got.first_line()), (StatusCode::OK, "app"));
    tokio::task::spawn_blocking(move || stopped.join().unwrap()).await.unwrap();
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_over_tls_by_alpn_reaches_the_backend() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &self_signed(&["example.com"]))]);
    let tls = tls_connect(tls_addr(&proxy), "example.com", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_handshake(tls).await;
    let req = Request::get("/shop/cart?id=7").header("host", "example.com").body(empty()).unwrap();
    let got = collect(h1.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.first_line(), "stable");
    assert_secure_cookie(&got);
    let seen = stable.last_seen();
    assert_forwarded_over_tls(&seen);
    assert_eq!(seen.headers.get(header::VIA).unwrap(), "1.1 cutover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let mut h2 = h2_handshake(TcpStream::connect(proxy.addr()).await.unwrap()).await;
    let req = Request::get("http://example.com/shop/cart?id=7").body(empty()).unwrap();
    let got = collect(h2.send_request(req).await.expect("h2c response")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.first_line(), "stable");
    let minted = set_cookies(&got).into_iter().find(|c| c.starts_with("cutover_id=")).expect("cookie");
    assert!(!minted.contains("Secure"), "no Secure on a plain listener: {minted}");
    let seen = stable.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers.get(header::HOST).unwrap(), "example.com");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(seen.uri, "/shop/cart?id=7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_split_cookie_fields_reach_the_backend_as_one_and_the_routing_cookies_count() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &self_signed(&["example.com"]))]);
    let tls = tls_connect(tls_addr(&proxy), "example.com", &[b"h2"]).await;
    let mut h2 = h2_handshake(tls).await;
    // Three separate `cookie` fields, as browsers send them over HTTP/2.
    let req = Request::get("https://example.com/")
        .header("cookie", "theme=dark")
        .header("cookie", "cutover_id=0123456789abcdef")
        .header("cookie", "cutover_beta=always")
        .body(empty())
        .unwrap();
    let got = collect(h2.send_request(req).await.expect("h2 response")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.first_line(), "canary", "the beta cookie in its own field sends the user to canary");
    assert!(set_cookies(&got).is_empty(), "the user key in its own field is found: no new cookie");
    let seen = canary.last_seen();
    let cookies: Vec<_> = seen.headers.get_all(header::COOKIE).iter().collect();
    assert_eq!(cookies, ["theme=dark; cutover_id=0123456789abcdef; cutover_beta=always"]);
}

// ---------------------------------------------------------------- SNI and hot swap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_for_the_name_and_unknown_names_get_the_first() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let (a, b, wild) = (self_signed(&["a.example"]), self_signed(&["b.example"]), self_signed(&["*.wild.example"]));
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("a", &a), ("b", &b), ("wild", &wild)]);
    let addr = tls_addr(&proxy);
    assert_eq!(presented(addr, "b.example").await, b.der());
    assert_eq!(presented(addr, "B.Example").await, b.der(), "names compare case-insensitively");
    assert_eq!(presented(addr, "a.example").await, a.der());
    assert_eq!(presented(addr, "x.wild.example").await, wild.der(), "a wildcard covers one label");
    assert_eq!(presented(addr, "x.y.wild.example").await, a.der(), "but not two");
    assert_eq!(presented(addr, "unknown.example").await, a.der(), "unknown names get the first pair");
    assert_eq!(presented(addr, "127.0.0.1").await, a.der(), "no SNI (an IP address) gets the first pair");
}

/// Polls new handshakes until `want` is presented (bounded).
async fn wait_presented(addr: SocketAddr, sni: &str, want: &CertificateDer<'static>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if presented(addr, sni).await == *want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn reloads(proxy: &Proxy, result: &str) -> f64 {
    metric(&proxy.metrics(), &format!("cutover_tls_certificate_reloads_total{{result=\"{result}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swap_is_served_without_restart() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let (old, new) = (self_signed(&["example.com"]), self_signed(&["example.com"]));
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &old)]);
    let addr = tls_addr(&proxy);
    // A connection opened before the swap keeps working after it.
    let mut before = h1_handshake(tls_connect(addr, "example.com", &[b"http/1.1"]).await).await;
    assert_eq!(presented(addr, "example.com").await, old.der());

    write_pair(proxy.dir.path(), "site", &new);
    assert!(wait_presented(addr, "example.com", &new.der()).await, "the new certificate is served without a restart");
    assert!(reloads(&proxy, "success") >= 1.0);

    let req = Request::get("/").header("host", "example.com").body(empty()).unwrap();
    let got = collect(before.send_request(req).await.expect("old connection still served")).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_swap_keeps_the_old_certificate_and_counts_a_failure() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let old = self_signed(&["example.com"]);
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &old)]);
    let addr = tls_addr(&proxy);

    std::fs::write(proxy.dir.path().join("site.crt"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    assert!(eventually(Duration::from_secs(15), || reloads(&proxy, "failure") >= 1.0).await, "failure counted");
    assert_eq!(presented(addr, "example.com").await, old.der(), "the last good certificate stays");
    assert_eq!(reloads(&proxy, "success"), 0.0);

    // A key that does not belong to the certificate is refused the same way.
    let other = self_signed(&["example.com"]);
    let failures = reloads(&proxy, "failure");
    std::fs::write(proxy.dir.path().join("site.crt"), &other.cert).unwrap();
    assert!(eventually(Duration::from_secs(15), || reloads(&proxy, "failure") > failures).await);
    assert_eq!(presented(addr, "example.com").await, old.der());

    // Fixing the files recovers.
    write_pair(proxy.dir.path(), "site", &other);
    assert!(wait_presented(addr, "example.com", &other.der()).await, "a good pair after a bad one is loaded");
}

// ---------------------------------------------------------------- start-up errors

/// Starts cutover with `config` in `dir`, expecting it to refuse; returns the error.
fn start_error(dir: tempfile::TempDir, config: &str) -> String {
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
    match cutover::server::start(cutover::server::Source::File(path), cutover::server::Inherited::default(), None) {
        Ok(_) => panic!("cutover started with a bad certificate"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn startup_names_a_missing_certificate_or_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_pool_config(dead_addr(), dead_addr(), 0.0, &tls_section(&["site"]));
    let shown = dir.path().join("site.crt").display().to_string();
    let error = start_error(dir, &config);
    assert!(error.contains("server.tls"), "{error}");
    assert!(error.contains("cannot read certificate") && error.contains(&shown), "{error}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.crt"), self_signed(&["example.com"]).cert).unwrap();
    let shown = dir.path().join("site.key").display().to_string();
    let error = start_error(dir, &config);
    assert!(error.contains("cannot read key") && error.contains(&shown), "{error}");
}

#[test]
fn startup_refuses_a_key_that_does_not_belong_to_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (self_signed(&["example.com"]), self_signed(&["example.com"]));
    std::fs::write(dir.path().join("site.crt"), &a.cert).unwrap();
    std::fs::write(dir.path().join("site.key"), &b.key).unwrap();
    let config = two_pool_config(dead_addr(), dead_addr(), 0.0, &tls_section(&["site"]));
    let error = start_error(dir, &config);
    assert!(error.contains("do not belong together"), "{error}");
}

#[test]
fn startup_refuses_files_without_pem_content() {
    let dir = tempfile::tempdir().unwrap();
    let good = self_signed(&["example.com"]);
    std::fs::write(dir.path().join("site.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("site.key"), &good.key).unwrap();
    let config = two_pool_config(dead_addr(), dead_addr(), 0.0, &tls_section(&["site"]));
    let error = start_error(dir, &config);
    assert!(error.contains("holds no certificate"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.crt"), &good.cert).unwrap();
    std::fs::write(dir.path().join("site.key"), &good.cert).unwrap();
    let error = start_error(dir, &config);
    assert!(error.contains("holds no usable private key"), "{error}");
}

// ---------------------------------------------------------------- limits

/// Sends raw bytes and returns the response's status line (bounded).
async fn raw_status_line(addr: SocketAddr, request: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // The proxy may answer before reading it all; a failed write is fine.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LIMIT, async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_of_100_kb_gets_431_and_the_proxy_keeps_serving() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let mut request = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let status = raw_status_line(proxy.addr(), request).await;
    assert!(status.starts_with("HTTP/1.1 431"), "got {status:?}");
    assert_eq!(stable.hits(), 0, "the request never reached a backend");
    let got = get(proxy.addr(), "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.first_line(), "stable");
}

// ---------------------------------------------------------------- WebSocket

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input).as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ABC[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;

/// One unfragmented frame; clients mask (RFC 6455 §5.3), servers do not.
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut key = [0u8; 4];
    if head[1] & 0x80 != 0 {
        r.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if head[1] & 0x80 != 0 {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((head[0] & 0x0f, payload))
}

async fn next_frame<R: AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
    tokio::time::timeout(LIMIT, read_frame(r)).await.expect("frame in time").expect("frame")
}

/// The backend's side: greets, echoes every message, answers a close.
async fn echo_websocket<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    if io.write_all(&frame(TEXT, b"welcome", None)).await.is_err() {
        return;
    }
    while let Ok((opcode, payload)) = read_frame(&mut io).await {
        let _ = io.write_all(&frame(opcode, &payload, None)).await;
        if opcode == CLOSE {
            let _ = io.shutdown().await;
            return;
        }
    }
}

async fn websocket_backend() -> Backend {
    Backend::start(|mut req: Request<Incoming>| async move {
        let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec());
        let websocket =
            req.headers().get(header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let (true, Some(key)) = (websocket, key) else { return text(StatusCode::BAD_REQUEST, "not a websocket\n") };
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgraded.await {
                echo_websocket(TokioIo::new(io)).await;
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header("sec-websocket-accept", websocket_accept(&key))
            .body(empty())
            .unwrap()
    })
    .await
}

/// The client's side, over any stream: handshake, a greeting from the
/// server, text and a 70 000-byte binary message echoed, then a clean close.
async fn websocket_session<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte: the greeting frame may follow the head at once.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(LIMIT, io.read_exact(&mut byte)).await.expect("101 in time").expect("101");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");

    assert_eq!(next_frame(&mut io).await, (TEXT, b"welcome".to_vec()), "server to client");
    let mask = Some([1, 2, 3, 4]);
    io.write_all(&frame(TEXT, b"hello", mask)).await.unwrap();
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    io.write_all(&frame(BINARY, &big, mask)).await.unwrap();
    io.write_all(&frame(CLOSE, &1000u16.to_be_bytes(), mask)).await.unwrap();
    assert_eq!(next_frame(&mut io).await, (TEXT, b"hello".to_vec()), "client to server and back");
    assert_eq!(next_frame(&mut io).await, (BINARY, big));
    assert_eq!(next_frame(&mut io).await, (CLOSE, 1000u16.to_be_bytes().to_vec()));
    let mut rest = [0u8; 16];
    let end = tokio::time::timeout(LIMIT, io.read(&mut rest)).await.expect("the tunnel closes in time");
    assert_eq!(end.expect("a clean end"), 0, "the backend's close ends the client connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_both_ways_and_close_over_http11_and_tls() {
    let (stable, canary) = (websocket_backend().await, Backend::named("canary").await);
    let proxy = tls_proxy(stable.addr, canary.addr, 0.0, &[("site", &self_signed(&["example.com"]))]);
    websocket_session(TcpStream::connect(proxy.addr()).await.unwrap()).await;
    let seen = stable.last_seen();
    assert_eq!(seen.headers.get(header::UPGRADE).unwrap(), "websocket");
    assert_eq!(seen.headers.get(header::CONNECTION).unwrap(), "upgrade");
    assert_eq!(seen.headers.get("sec-websocket-version").unwrap(), "13");

    websocket_session(tls_connect(tls_addr(&proxy), "example.com", &[b"http/1.1"]).await).await;
    assert_eq!(stable.hits(), 2);
    let metrics = proxy.metrics();
    assert_eq!(metric(&metrics, r#"cutover_requests_total{code="101",route="web",version="stable"}"#), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_by_extended_connect_reaches_an_http11_backend() {
    let (stable, canary) = (websocket_backend().await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let mut h2 = h2_handshake(TcpStream::connect(proxy.addr()).await.unwrap()).await;
    // One plain request first, so the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived before the CONNECT.
    let plain = h2.send_request(Request::get("http://example.com/").body(empty()).unwrap()).await.unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST, "the websocket backend answers plain requests with 400");

    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri("http://example.com/chat")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(empty())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = tokio::time::timeout(LIMIT, h2.send_request(req)).await.expect("in time").expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    for hop_only in ["connection", "upgrade", "sec-websocket-accept"] {
        assert!(!resp.headers().contains_key(hop_only), "{hop_only} in {:?}", resp.headers());
    }
    let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.expect("the stream becomes the tunnel"));

    assert_eq!(next_frame(&mut io).await, (TEXT, b"welcome".to_vec()), "server to client");
    let mask = Some([9, 8, 7, 6]);
    io.write_all(&frame(TEXT, b"hello over h2", mask)).await.unwrap();
    assert_eq!(next_frame(&mut io).await, (TEXT, b"hello over h2".to_vec()), "client to server and back");
    io.write_all(&frame(CLOSE, &1000u16.to_be_bytes(), mask)).await.unwrap();
    assert_eq!(next_frame(&mut io).await, (CLOSE, 1000u16.to_be_bytes().to_vec()));

    let seen = stable.last_seen();
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/chat");
    assert_eq!(seen.headers.get(header::UPGRADE).unwrap(), "websocket");
    assert_eq!(seen.headers.get(header::CONNECTION).unwrap(), "upgrade");
    assert_eq!(seen.headers.get("sec-websocket-version").unwrap(), "13");
    assert_eq!(seen.headers.get("sec-websocket-protocol").unwrap(), "chat");
    let key = seen.headers.get("sec-websocket-key").expect("a key for the HTTP/1.1 leg");
    assert_eq!(key.len(), 24, "base64 of 16 bytes: {key:?}");
    let metrics = proxy.metrics();
    assert_eq!(metric(&metrics, r#"cutover_requests_total{code="200",route="web",version="stable"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_to_a_backend_that_does_not_switch_is_a_502() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let mut h2 = h2_handshake(TcpStream::connect(proxy.addr()).await.unwrap()).await;
    let plain = h2.send_request(Request::get("http://example.com/").body(empty()).unwrap()).await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri("http://example.com/chat")
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let got = collect(h2.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.body, "502 Bad Gateway: the backend did not switch protocols\n");
    // A CONNECT that is not a WebSocket stays refused.
    let tunnel = Request::builder().method(http::Method::CONNECT).uri("example.com:443").body(empty()).unwrap();
    assert_eq!(collect(h2.send_request(tunnel).await.expect("response")).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

// ---------------------------------------------------------------- TLS to backends

/// An HTTP/1.1 backend behind TLS with `pem`; records the SNI it was asked for.
struct TlsBackend {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_backend(pem: &Pem, name: &'static str) -> TlsBackend {
    let chain = vec![pem.der()];
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let seen = sni.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                seen.lock().unwrap().push(tls.get_ref().1.server_name().map(str::to_string));
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(text(StatusCode::OK, &format!("{name}\n")))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    TlsBackend { addr, sni, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_backends_verifies_against_the_pool_ca_and_refuses_others_with_502() {
    let ca = Ca::new();
    let trusted = tls_backend(&ca.issue(&["app.internal"]), "trusted").await;
    let stranger = tls_backend(&self_signed(&["app.internal"]), "stranger").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1

[admin]
listen = "unix:{{dir}}/admin.sock"

[state]
path = "{{dir}}/state.json"

[log]
access = "off"

[[routes]]
name = "good"
path_prefix = "/good"
stable = "trusted"

[[routes]]
name = "bad"
path_prefix = "/bad"
stable = "stranger"

[pools.trusted]
backends = ["{}"]
tls = {{ ca = "{{dir}}/ca.pem", sni = "app.internal" }}

[pools.stranger]
backends = ["{}"]
tls = {{ ca = "{{dir}}/ca.pem", sni = "app.internal" }}
"#,
        trusted.addr, stranger.addr
    );
    let proxy = Proxy::start_in(dir, &config);
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..5 {
        let got = client.get("/good", &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert_eq!(got.first_line(), "trusted");
    }
    // Five requests, one TLS connection: upstream connections are pooled.
    assert_eq!(trusted.sni.lock().unwrap().as_slice(), [Some("app.internal".to_string())]);

    let got = client.get("/bad", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.body);
    assert!(got.body.contains("cannot connect to the backend"), "{}", got.body);
    let metrics = proxy.metrics();
    assert!(metric(&metrics, r#"cutover_upstream_errors_total{kind="connect",route="bad",version="stable"}"#) >= 1.0);
}
