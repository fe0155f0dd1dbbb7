//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`, `/v3/watch`): plain HTTP/1.1 with hyper's
//! client, keys and values in base64, 64-bit numbers as strings. No
//! generated code, no `protoc`: a machine with only Rust builds it.
//!
//! Each call tries the endpoints in turn, starting with the last one that
//! answered, and gives up after `timeout` per endpoint: an unreachable
//! cluster is an error the caller turns into 503, never a hang.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::base64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered in time (or at all).
    #[error("{0}")]
    Unreachable(String),
    /// etcd answered with an error (bad request, lease not found, auth...).
    #[error("etcd refused: {0}")]
    Refused(String),
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub deleted: bool,
    pub kv: Kv,
}

/// A comparison in a transaction.
pub enum Compare {
    /// The key's last modification is `revision` (0: the key does not exist).
    ModRevision(String, i64),
    /// The key's value is exactly this.
    Value(String, Vec<u8>),
}

/// An operation in a transaction.
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: i64 },
    Delete(String),
}

pub struct Client {
    /// `host:port` of each endpoint.
    endpoints: Vec<String>,
    /// Set when an endpoint is `https://`: the connector (the configured
    /// CA, else the Mozilla roots; a client certificate if configured) and
    /// which endpoints use it.
    tls: Option<(tokio_rustls::TlsConnector, Vec<bool>)>,
    preferred: AtomicUsize,
    timeout: Duration,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Kv {
    let text = |name: &str| v.get(name).and_then(Value::as_str).unwrap_or("");
    Kv {
        key: String::from_utf8_lossy(&base64::decode(text("key")).unwrap_or_default()).into_owned(),
        value: base64::decode(text("value")).unwrap_or_default(),
        mod_revision: v.get("mod_revision").map_or(0, num),
        create_revision: v.get("create_revision").map_or(0, num),
        lease: v.get("lease").map_or(0, num),
    }
}

/// The end of the range of every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision(v: &Value) -> i64 {
    v.get("header").and_then(|h| h.get("revision")).map_or(0, num)
}

impl Client {
    /// `urls` as in `[fleet] etcd` (`http://host:port` or `https://host:port`).
    pub fn new(
        urls: &[String],
        timeout: Duration,
        credentials: Option<(String, String)>,
        tls: Option<&crate::config::FleetTls>,
    ) -> Result<Client, String> {
        let mut endpoints = Vec::new();
        let mut https = Vec::new();
        for url in urls {
            let (authority, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
                (Some(a), _) => (a, false),
                (_, Some(a)) => (a, true),
                _ => return Err(format!("{url}: expected http:// or https://")),
            };
            endpoints.push(authority.trim_end_matches('/').to_string());
            https.push(secure);
        }
        let tls = match https.iter().any(|&s| s) {
            true => Some((connector(tls)?, https)),
            false => None,
        };
        Ok(Client { endpoints, tls, preferred: AtomicUsize::new(0), timeout, credentials, token: Mutex::new(None) })
    }

    async fn connect(&self, authority: &str) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        let stream = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(authority))
            .await
            .map_err(|_| format!("{authority}: connect timed out"))?
            .map_err(|e| format!("{authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let index = self.endpoints.iter().position(|e| e == authority).unwrap_or(0);
        if let Some((connector, https)) = &self.tls
            && https.get(index) == Some(&true)
        {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| format!("{authority}: {host:?} is not a valid TLS server name"))?;
            let stream = connector.connect(name, stream).await.map_err(|e| format!("{authority}: TLS: {e}"))?;
            let (sender, conn) =
                http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("{authority}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(sender);
        }
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(&self, authority: &str, path: &str, body: &Value) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = self.token.lock().ok().and_then(|t| t.clone()) {
            builder = builder.header(header::AUTHORIZATION, token);
        }
        builder.body(Full::new(Bytes::from(body.to_string()))).unwrap_or_default()
    }

    /// Sends one call to the endpoints in turn; returns the first answer.
    async fn send(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), EtcdError> {
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % count.max(1);
        let mut errors = Vec::new();
        for i in 0..count {
            let index = (first + i) % count;
            let authority = &self.endpoints[index];
            let attempt = async {
                let mut sender = self.connect(authority).await?;
                let resp = sender
                    .send_request(self.request(authority, path, body))
                    .await
                    .map_err(|e| format!("{authority}: {e}"))?;
                let status = resp.status();
                let bytes = resp.into_body().collect().await.map_err(|e| format!("{authority}: {e}"))?.to_bytes();
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{authority}: not a JSON answer ({e}), status {status}"))?;
                Ok::<_, String>((status, value))
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok((status, value))) if status.is_server_error() && value.get("code").map(num) == Some(14) => {
                    // 14 = unavailable: this member has no leader; try another.
                    errors.push(format!("{authority}: {}", value.get("message").and_then(Value::as_str).unwrap_or("")));
                }
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(e)) => errors.push(e),
                Err(_) => {
                    errors.push(format!("{authority}: no answer within {}", humantime::format_duration(self.timeout)))
                }
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    /// One call; signs in first when credentials are configured.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let needs_token = self.credentials.is_some() && self.token.lock().map(|t| t.is_none()).unwrap_or(true);
        if needs_token {
            self.authenticate().await?;
        }
        let (status, value) = self.send(path, &body).await?;
        if let Some(message) = value.get("error").or_else(|| value.get("message")).and_then(Value::as_str) {
            // 16 = unauthenticated: the token expired; sign in again once.
            if value.get("code").map(num) == Some(16) && self.credentials.is_some() {
                self.authenticate().await?;
                let (_, value) = self.send(path, &body).await?;
                return match value.get("error").and_then(Value::as_str) {
                    Some(message) => Err(EtcdError::Refused(message.to_string())),
                    None => Ok(value),
                };
            }
            return Err(EtcdError::Refused(format!("{message} ({status})")));
        }
        Ok(value)
    }

    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((name, password)) = &self.credentials else { return Ok(()) };
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
        let (_, value) = self.send("/v3/auth/authenticate", &json!({ "name": name, "password": password })).await?;
        let token = value
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| EtcdError::Refused(format!("authentication failed for user {name:?}: {value}")))?;
        if let Ok(mut t) = self.token.lock() {
            *t = Some(token.to_string());
        }
        Ok(())
    }

    /// Every key under `prefix` (or the one key `key` when `prefix` is false),
    /// with the store's revision at the time of the read.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({ "key": base64::encode(key.as_bytes()) });
        if prefix {
            body["range_end"] = json!(base64::encode(&prefix_end(key)));
        }
        let value = self.call("/v3/kv/range", body).await?;
        let kvs = value.get("kvs").and_then(Value::as_array).map(|a| a.iter().map(kv).collect()).unwrap_or_default();
        Ok((revision(&value), kvs))
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": base64::encode(key.as_bytes()), "value": base64::encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        Ok(revision(&self.call("/v3/kv/put", body).await?))
    }

    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        Ok(revision(&self.call("/v3/kv/deleterange", json!({ "key": base64::encode(key.as_bytes()) })).await?))
    }

    /// A transaction: `success` if every comparison holds, else nothing.
    /// Returns whether it succeeded and the store's revision after it.
    pub async fn txn(&self, compare: &[Compare], success: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision(key, rev) => json!({
                    "key": base64::encode(key.as_bytes()), "target": "MOD", "result": "EQUAL",
                    "mod_revision": rev.to_string(),
                }),
                Compare::Value(key, value) => json!({
                    "key": base64::encode(key.as_bytes()), "target": "VALUE", "result": "EQUAL",
                    "value": base64::encode(value),
                }),
            })
            .collect();
        let success: Vec<Value> = success
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let mut put = json!({ "key": base64::encode(key.as_bytes()), "value": base64::encode(value) });
                    if *lease != 0 {
                        put["lease"] = json!(lease.to_string());
                    }
                    json!({ "request_put": put })
                }
                Op::Delete(key) => json!({ "request_delete_range": { "key": base64::encode(key.as_bytes()) } }),
            })
            .collect();
        let value = self.call("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        // The gateway leaves `succeeded` out when it is false.
        Ok((value.get("succeeded").and_then(Value::as_bool).unwrap_or(false), revision(&value)))
    }

    /// Creates a lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let value = self.call("/v3/lease/grant", json!({ "TTL": ttl.to_string() })).await?;
        match value.get("ID").map(num) {
            Some(id) if id != 0 => Ok(id),
            _ => Err(EtcdError::Refused(format!("no lease granted: {value}"))),
        }
    }

    /// Renews a lease; returns the seconds it has left (0: it is gone).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let value = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        Ok(value.get("result").and_then(|r| r.get("TTL")).map_or(0, num))
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() })).await.map(|_| ())
    }

    /// Watches every key under `prefix` from revision `start`: an open
    /// stream of changes in revision order.
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": base64::encode(prefix.as_bytes()),
            "range_end": base64::encode(&prefix_end(prefix)),
            "start_revision": start.to_string(),
        }});
        if self.credentials.is_some() && self.token.lock().map(|t| t.is_none()).unwrap_or(true) {
            self.authenticate().await?;
        }
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % count.max(1);
        let mut errors = Vec::new();
        for i in 0..count {
            let authority = &self.endpoints[(first + i) % count];
            let opened = tokio::time::timeout(self.timeout, async {
                let mut sender = self.connect(authority).await?;
                let resp = sender
                    .send_request(self.request(authority, "/v3/watch", &body))
                    .await
                    .map_err(|e| format!("{authority}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("{authority}: watch answered {}", resp.status()));
                }
                Ok(resp.into_body())
            })
            .await;
            match opened {
                Ok(Ok(body)) => return Ok(Watch { body, buffer: Vec::new() }),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!("{authority}: no answer")),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }
}

/// TLS towards etcd: the configured CA (else the Mozilla roots) and, when
/// configured, a client certificate (etcd's `--client-cert-auth`).
fn connector(settings: Option<&crate::config::FleetTls>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match settings.and_then(|t| t.ca.as_ref()) {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("fleet.tls.ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("fleet.tls.ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("fleet.tls.ca {} holds no certificate", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("fleet.tls.ca {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match settings.and_then(|t| t.cert.as_ref().zip(t.key.as_ref())) {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("fleet.tls.cert {}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("fleet.tls.cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("fleet.tls.key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("fleet.tls: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// An open watch: [`Watch::next`] yields batches of changes.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

/// What one watch message says.
pub enum WatchMessage {
    Events {
        revision: i64,
        events: Vec<Event>,
    },
    /// The start revision was compacted away: read everything again.
    Compacted {
        revision: i64,
    },
}

impl Watch {
    /// The next message; an error when the stream ends or breaks.
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
                if let Some(error) = value.get("error") {
                    return Err(EtcdError::Refused(format!("watch: {error}")));
                }
                let Some(result) = value.get("result") else { continue };
                let compacted = result.get("compact_revision").map_or(0, num);
                if compacted != 0 {
                    return Ok(WatchMessage::Compacted { revision: compacted });
                }
                if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                    return Err(EtcdError::Refused(format!("watch canceled: {result}")));
                }
                let events: Vec<Event> = result
                    .get("events")
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .filter_map(|e| {
                                Some(Event {
                                    deleted: e.get("type").and_then(Value::as_str) == Some("DELETE"),
                                    kv: kv(e.get("kv")?),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if events.is_empty() {
                    continue;
                }
                return Ok(WatchMessage::Events { revision: revision(result), events });
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if self.buffer.len() + data.len() > 64 << 20 {
                            return Err(EtcdError::Refused("watch message larger than 64 MiB".into()));
                        }
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Unreachable(format!("watch broke: {e}"))),
                None => return Err(EtcdError::Unreachable("watch stream ended".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn keys_and_numbers_are_read_from_the_gateway_json() {
        let v: Value = serde_json::from_str(
            r#"{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6","lease":"7"}"#,
        )
        .unwrap();
        assert_eq!(
            kv(&v),
            Kv { key: "foo".into(), value: b"baz".to_vec(), mod_revision: 3, create_revision: 2, lease: 7 }
        );
    }
}
