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
    /// An answer that does not say what etcd's answers say (a revision
    /// missing or negative, a number that is none): refused, not guessed at.
    #[error("malformed answer from etcd: {0}")]
    Malformed(String),
}

/// A record in an answer that does not decode (a key or value that is not
/// base64, a number that is missing or negative...): refused whole. The
/// caller logs and ignores it, as it does a record whose value does not
/// parse; no part of it is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadRecord(String);

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

/// A 64-bit number as the gateway writes it (a string; a JSON number is
/// taken too). Never negative: no revision, lease, TTL or count is.
fn num(v: &Value) -> Result<i64, String> {
    let n = match v {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    n.filter(|&n| n >= 0).ok_or_else(|| format!("{v} is not a number of 0 or more"))
}

/// A number field that proto3's JSON mapping leaves out when it is 0.
fn num_or_zero(v: &Value, name: &str) -> Result<i64, String> {
    v.get(name).map_or(Ok(0), |n| num(n).map_err(|e| format!("{name}: {e}")))
}

/// A revision field: a key's and an answer's revision is 1 or more (the
/// store starts at 1), so a missing one is refused, not read as 0.
fn revision_field(v: &Value, name: &str) -> Result<i64, String> {
    match v.get(name).map(num) {
        Some(Ok(n)) if n > 0 => Ok(n),
        Some(Ok(n)) => Err(format!("{name} {n} is no revision")),
        Some(Err(e)) => Err(format!("{name}: {e}")),
        None => Err(format!("no {name}")),
    }
}

/// A base64 field; `required` false: proto3 leaves an empty one out.
fn bytes_field(v: &Value, name: &str, required: bool) -> Result<Vec<u8>, String> {
    match v.get(name) {
        Some(Value::String(text)) => base64::decode(text).ok_or_else(|| format!("{name} is not base64")),
        Some(_) => Err(format!("{name} is not a string")),
        None if required => Err(format!("no {name}")),
        None => Ok(Vec::new()),
    }
}

/// A record's JSON for a log line: bounded, escaped by JSON.
fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// One key as the gateway writes it. Fields proto3 leaves out when zero or
/// empty (`value`, `create_revision`, `lease`) read as such; anything that
/// is there must decode, and `key` and `mod_revision` must be there.
fn kv(v: &Value) -> Result<Kv, BadRecord> {
    let decoded = || -> Result<Kv, String> {
        let key = String::from_utf8(bytes_field(v, "key", true)?).map_err(|_| "key is not UTF-8".to_string())?;
        if key.is_empty() {
            return Err("empty key".into());
        }
        Ok(Kv {
            value: bytes_field(v, "value", false).map_err(|e| format!("key {key:?}: {e}"))?,
            mod_revision: revision_field(v, "mod_revision").map_err(|e| format!("key {key:?}: {e}"))?,
            create_revision: num_or_zero(v, "create_revision").map_err(|e| format!("key {key:?}: {e}"))?,
            lease: num_or_zero(v, "lease").map_err(|e| format!("key {key:?}: {e}"))?,
            key,
        })
    };
    decoded().map_err(|e| BadRecord(format!("{e} in {}", excerpt(v))))
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

/// The store's revision in an answer's header, which every answer carries.
fn revision(v: &Value) -> Result<i64, EtcdError> {
    let header = v.get("header").unwrap_or(&Value::Null);
    revision_field(header, "revision").map_err(|e| EtcdError::Malformed(format!("header {e} in {}", excerpt(v))))
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
                Ok(Ok((status, value)))
                    if status.is_server_error() && value.get("code").and_then(|c| num(c).ok()) == Some(14) =>
                {
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
            if value.get("code").and_then(|c| num(c).ok()) == Some(16) && self.credentials.is_some() {
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
    /// with the store's revision at the time of the read; a key that does
    /// not decode is there as the error the caller logs and ignores.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<(i64, Vec<Result<Kv, BadRecord>>), EtcdError> {
        let mut body = json!({ "key": base64::encode(key.as_bytes()) });
        if prefix {
            body["range_end"] = json!(base64::encode(&prefix_end(key)));
        }
        let value = self.call("/v3/kv/range", body).await?;
        let kvs = value.get("kvs").and_then(Value::as_array).map(|a| a.iter().map(kv).collect()).unwrap_or_default();
        Ok((revision(&value)?, kvs))
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": base64::encode(key.as_bytes()), "value": base64::encode(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        revision(&self.call("/v3/kv/put", body).await?)
    }

    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        revision(&self.call("/v3/kv/deleterange", json!({ "key": base64::encode(key.as_bytes()) })).await?)
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
        Ok((value.get("succeeded").and_then(Value::as_bool).unwrap_or(false), revision(&value)?))
    }

    /// Creates a lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let value = self.call("/v3/lease/grant", json!({ "TTL": ttl.to_string() })).await?;
        match value.get("ID").map(num) {
            Some(Ok(id)) if id != 0 => Ok(id),
            _ => Err(EtcdError::Refused(format!("no lease granted: {value}"))),
        }
    }

    /// Renews a lease; returns the seconds it has left (0: it is gone, and
    /// proto3 leaves the TTL out).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let value = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        let Some(result) = value.get("result") else {
            return Err(EtcdError::Malformed(format!("keepalive without a result: {}", excerpt(&value))));
        };
        num_or_zero(result, "TTL").map_err(|e| EtcdError::Malformed(format!("keepalive {e} in {}", excerpt(&value))))
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
#[derive(Debug, PartialEq)]
pub enum WatchMessage {
    /// Changes in revision order; one that does not decode is there as the
    /// error the caller logs and ignores. The message's header revision is
    /// not kept: it is "the key-value store revision when the request was
    /// applied" (etcd's API reference), and a watcher catching up gets its
    /// events in batches of at most 1,000 revisions, each with the store's
    /// current revision in its header, so it says nothing of what was
    /// delivered.
    Events { events: Vec<Result<Event, BadRecord>> },
    /// The start revision was compacted away: read everything again.
    Compacted { revision: i64 },
}

/// One change in a watch message: a `kv`, and a `type` that proto3 leaves
/// out for a put.
fn event(e: &Value) -> Result<Event, BadRecord> {
    let deleted = match e.get("type").map(|t| t.as_str()) {
        None | Some(Some("PUT")) => false,
        Some(Some("DELETE")) => true,
        Some(_) => return Err(BadRecord(format!("an event of unknown type in {}", excerpt(e)))),
    };
    match e.get("kv") {
        Some(kv_value) => Ok(Event { deleted, kv: kv(kv_value)? }),
        None => Err(BadRecord(format!("an event without kv in {}", excerpt(e)))),
    }
}

/// One line of the watch stream: a message, or None for one that carries
/// no change (blank lines, the watch's creation, progress notices). Neither
/// of the last two moves the revision a watch resumes from: the creation's
/// header holds the store's current revision, not the watcher's; a progress
/// notice is sent only when asked for (this client does not), and in etcd
/// releases without the fix for etcd issue 15220 a requested one could
/// overtake events still to be sent.
fn watch_message(line: &[u8]) -> Result<Option<WatchMessage>, EtcdError> {
    let value = match serde_json::from_slice::<Value>(line) {
        Ok(value) => value,
        Err(_) if line.trim_ascii().is_empty() => return Ok(None),
        // Skipping it could skip changes: the watch resumes from the last revision applied.
        Err(e) => return Err(EtcdError::Malformed(format!("watch: a line that is not JSON ({e})"))),
    };
    if let Some(error) = value.get("error") {
        return Err(EtcdError::Refused(format!("watch: {error}")));
    }
    let Some(result) = value.get("result") else { return Ok(None) };
    let compacted = num_or_zero(result, "compact_revision").map_err(|e| EtcdError::Malformed(format!("watch: {e}")))?;
    if compacted != 0 {
        return Ok(Some(WatchMessage::Compacted { revision: compacted }));
    }
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        return Err(EtcdError::Refused(format!("watch canceled: {result}")));
    }
    let events: Vec<Result<Event, BadRecord>> =
        result.get("events").and_then(Value::as_array).map(|list| list.iter().map(event).collect()).unwrap_or_default();
    if events.is_empty() {
        return Ok(None);
    }
    // Every answer carries a header revision: a message without one is not etcd's.
    revision(result)?;
    Ok(Some(WatchMessage::Events { events }))
}

impl Watch {
    /// The next message; an error when the stream ends or breaks.
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if let Some(message) = watch_message(&line)? {
                    return Ok(message);
                }
                continue;
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
            Ok(Kv { key: "foo".into(), value: b"baz".to_vec(), mod_revision: 3, create_revision: 2, lease: 7 })
        );
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_are_64_bit_integers_never_negative() {
        assert_eq!(num(&json(r#""42""#)), Ok(42));
        assert_eq!(num(&json("42")), Ok(42));
        assert_eq!(num(&json(r#""0""#)), Ok(0));
        for bad in [r#""-1""#, "-1", r#""""#, r#""4x""#, r#""1.5""#, "1.5", "true", "null", r#""99999999999999999999""#]
        {
            assert!(num(&json(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_the_gateway_leaves_out_when_zero_read_as_zero() {
        // A deleted key as a watch reports it: no value, create_revision or
        // lease (proto3's JSON mapping leaves zeros and empties out).
        let deleted = kv(&json(r#"{"key":"Zm9v","mod_revision":"9"}"#));
        let want = Kv { key: "foo".into(), value: Vec::new(), mod_revision: 9, create_revision: 0, lease: 0 };
        assert_eq!(deleted, Ok(want));
    }

    #[test]
    fn a_key_that_does_not_decode_is_refused_whole() {
        let good = json(r#"{"key":"Zm9v","create_revision":"2","mod_revision":"3","value":"YmF6","lease":"7"}"#);
        assert!(kv(&good).is_ok());
        for (field, value, why) in [
            ("value", Some(json(r#""not base64!""#)), "value"),
            ("value", Some(json("5")), "value"),
            ("key", None, "key"),
            ("key", Some(json(r#""Zm9""#)), "key"),
            ("key", Some(json(r#""/w==""#)), "key"),
            ("key", Some(json(r#""""#)), "key"),
            ("mod_revision", None, "mod_revision"),
            ("mod_revision", Some(json(r#""0""#)), "mod_revision"),
            ("mod_revision", Some(json(r#""-3""#)), "mod_revision"),
            ("create_revision", Some(json(r#""-1""#)), "create_revision"),
            ("lease", Some(json(r#""x""#)), "lease"),
            ("lease", Some(json(r#""-7""#)), "lease"),
        ] {
            let mut record = good.clone();
            match value {
                Some(value) => record[field] = value,
                None => {
                    record.as_object_mut().unwrap().remove(field);
                }
            }
            let refused = kv(&record).expect_err(&record.to_string()).to_string();
            assert!(refused.contains(why), "{refused} for {record}");
        }
    }

    #[test]
    fn an_answer_without_a_revision_is_refused() {
        assert_eq!(revision(&json(r#"{"header":{"revision":"12"}}"#)), Ok(12));
        for bad in [
            r#"{}"#,
            r#"{"header":{}}"#,
            r#"{"header":{"revision":"0"}}"#,
            r#"{"header":{"revision":"-5"}}"#,
            r#"{"header":{"revision":"x"}}"#,
        ] {
            assert!(matches!(revision(&json(bad)), Err(EtcdError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn a_watch_message_keeps_its_good_events_and_refuses_its_bad_ones() {
        let line = br#"{"result":{"header":{"revision":"9"},"events":[
            {"kv":{"key":"YQ==","mod_revision":"7","create_revision":"7","value":"MQ=="}},
            {"kv":{"key":"Yg==","mod_revision":"8","create_revision":"8","value":"***"}},
            {"type":"BOGUS","kv":{"key":"Yw==","mod_revision":"8"}},
            {"type":"PUT"},
            {"type":"DELETE","kv":{"key":"YQ==","mod_revision":"9"}}]}}"#
            .iter()
            .filter(|&&b| b != b'\n')
            .copied()
            .collect::<Vec<u8>>();
        let Ok(Some(WatchMessage::Events { events })) = watch_message(&line) else {
            panic!("{:?}", watch_message(&line))
        };
        let a = |value: &[u8], rev, create| Kv {
            key: "a".into(),
            value: value.to_vec(),
            mod_revision: rev,
            create_revision: create,
            lease: 0,
        };
        assert_eq!(events.len(), 5);
        assert_eq!(events[0], Ok(Event { deleted: false, kv: a(b"1", 7, 7) }));
        assert!(events[1].as_ref().is_err_and(|e| e.to_string().contains("value")), "{:?}", events[1]);
        assert!(events[2].as_ref().is_err_and(|e| e.to_string().contains("type")), "{:?}", events[2]);
        assert!(events[3].as_ref().is_err(), "an event without kv: {:?}", events[3]);
        assert_eq!(events[4], Ok(Event { deleted: true, kv: a(b"", 9, 0) }));
    }

    #[test]
    fn a_watch_message_that_does_not_say_what_a_watch_says_is_refused() {
        let events = r#""events":[{"kv":{"key":"YQ==","mod_revision":"7"}}]"#;
        for bad in [
            format!(r#"{{"result":{{{events}}}}}"#),
            format!(r#"{{"result":{{"header":{{"revision":"-9"}},{events}}}}}"#),
            r#"{"result":{"header":{"revision":"9"},"compact_revision":"-1"}}"#.to_string(),
            "not json".to_string(),
        ] {
            assert!(matches!(watch_message(bad.as_bytes()), Err(EtcdError::Malformed(_))), "{bad}");
        }
        let compacted = br#"{"result":{"header":{"revision":"9"},"compact_revision":"5"}}"#;
        assert_eq!(watch_message(compacted), Ok(Some(WatchMessage::Compacted { revision: 5 })));
        let created = br#"{"result":{"header":{"revision":"3"},"created":true}}"#;
        assert_eq!(watch_message(created), Ok(None));
        assert_eq!(watch_message(b"\r\n"), Ok(None));
    }
}
