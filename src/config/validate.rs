//! Raw TOML structures to a validated [`Config`], with file, line and key in
//! every error.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::*;
use super::{kinds, raw};

/// Parses and validates config text. `file` names the source in errors;
/// relative paths inside the config are resolved against `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let cx = Cx { file, text, base };
    // What toml::from_str does, in two steps with a pause between (each
    // takes a millisecond or two for a 1,000-route file).
    let document = toml::de::Deserializer::parse(text).map_err(|e| cx.toml_error(&e))?;
    crate::pace::point();
    let raw = <raw::File as serde::Deserialize>::deserialize(document).map_err(|e| cx.toml_error(&e))?;
    crate::pace::point();
    cx.config(raw)
}

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
}

type Res<T> = Result<T, ConfigError>;

impl Cx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(span.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let (key, message) = super::diagnose::describe(self.text, e);
        ConfigError { file: self.file.to_string(), line: e.span().map(|s| self.line_of(s.start)), key, message }
    }

    fn duration(&self, value: &Option<Spanned<impl AsRef<str>>>, key: &str, default: &str) -> Res<Duration> {
        let Some(value) = value else {
            return Ok(humantime::parse_duration(default).expect("default durations parse"));
        };
        let text = value.get_ref().as_ref();
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            self.error(
                value.span(),
                key,
                format!("expected a duration such as \"2s\", \"500ms\" or \"30d\", got {text:?} ({e})"),
            )
        })?;
        if d.is_zero() {
            return Err(self.error(value.span(), key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn count(&self, value: &Option<Spanned<i64>>, key: &str, default: u32, min: i64) -> Res<u32> {
        let Some(value) = value else { return Ok(default) };
        let n = *value.get_ref();
        u32::try_from(n)
            .ok()
            .filter(|_| n >= min)
            .ok_or_else(|| self.error(value.span(), key, format!("expected a whole number of at least {min}, got {n}")))
    }

    fn path(&self, value: &Spanned<impl AsRef<str>>) -> PathBuf {
        let p = Path::new(value.get_ref().as_ref());
        if p.is_absolute() { p.to_path_buf() } else { self.base.join(p) }
    }

    fn socket_addr(&self, value: &Spanned<impl AsRef<str>>, key: &str) -> Res<SocketAddr> {
        let text = value.get_ref().as_ref();
        text.trim().parse().map_err(|_| {
            self.error(
                value.span(),
                key,
                format!("expected an address such as \"0.0.0.0:8080\" or \"[::1]:8080\", got {text:?}"),
            )
        })
    }

    fn read_secret(&self, value: &Spanned<impl AsRef<str>>, key: &str, what: &str) -> Res<Vec<u8>> {
        let path = self.path(value);
        let mut bytes = std::fs::read(&path).map_err(|e| {
            self.error(value.span(), key, format!("cannot read the {what} file {}: {e}", path.display()))
        })?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        if bytes.len() < 16 {
            return Err(self.error(
                value.span(),
                key,
                format!(
                    "the {what} in {} is {} bytes; use at least 16 (32 random bytes recommended)",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    fn config(&self, raw: raw::File) -> Res<Config> {
        let pools = self.pools(&raw.pools)?;
        let routes = self.routes(&raw.routes, &pools)?;
        Ok(Config {
            source: self.file.to_string(),
            server: self.server(raw.server.as_ref().map(|s| s.get_ref()))?,
            timeouts: self.timeouts(raw.timeouts.as_ref().map(|s| s.get_ref()))?,
            sticky: self.sticky(raw.sticky.as_ref().map(|s| s.get_ref()))?,
            beta: self.beta(raw.beta.as_ref().map(|s| s.get_ref()))?,
            admin: raw.admin.as_ref().map(|a| self.admin(a.get_ref())).transpose()?,
            metrics: raw.metrics.as_ref().map(|m| self.metrics(m.get_ref())).transpose()?,
            log: self.log(raw.log.as_ref().map(|l| l.get_ref()))?,
            state: raw.state.as_ref().map(|s| self.state(s.get_ref())),
            retries: self.retries(raw.retries.as_ref().map(|r| r.get_ref()))?,
            routes,
            pools,
            fleet: raw.fleet.as_ref().map(|f| self.fleet(f.get_ref(), f.span())).transpose()?,
        })
    }

    fn listen_list<K>(&self, list: &Spanned<kinds::List<K>>, key: &str) -> Res<Vec<SocketAddr>> {
        if list.get_ref().is_empty() {
            return Err(self.error(list.span(), key, "expected at least one address"));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for item in list.get_ref().iter() {
            let addr = self.socket_addr(item, key)?;
            if !seen.insert(addr) {
                return Err(self.error(item.span(), key, format!("{addr} is listed twice")));
            }
            out.push(addr);
        }
        Ok(out)
    }

    fn server(&self, raw: Option<&raw::Server>) -> Res<Server> {
        let default = raw::Server::default();
        let raw = raw.unwrap_or(&default);
        let listen = match &raw.listen {
            Some(list) => self.listen_list(list, "server.listen")?,
            None => vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
        };
        let workers = match &raw.workers {
            Some(w) if !(0..=1024).contains(w.get_ref()) => {
                return Err(self.error(w.span(), "server.workers", "expected 0 (one per core) up to 1024"));
            }
            Some(w) => *w.get_ref() as usize,
            None => 0,
        };
        let tls = match &raw.tls {
            None => None,
            Some(tls) => {
                let tls = tls.get_ref();
                let listen = self.listen_list(&tls.listen, "server.tls.listen")?;
                if tls.certs.get_ref().is_empty() {
                    return Err(self.error(
                        tls.certs.span(),
                        "server.tls.certs",
                        "expected at least one { cert, key } pair",
                    ));
                }
                let certs = tls
                    .certs
                    .get_ref()
                    .iter()
                    .map(|pair| CertPair { cert: self.path(&pair.get_ref().cert), key: self.path(&pair.get_ref().key) })
                    .collect();
                Some(ServerTls { listen, certs })
            }
        };
        if let Some(tls) = &tls
            // Port 0 asks the kernel for a free port: two such entries never clash.
            && let Some(addr) = tls.listen.iter().find(|a| a.port() != 0 && listen.contains(a))
        {
            let span = raw.tls.as_ref().map(|t| t.span()).unwrap_or(0..0);
            return Err(self.error(span, "server.tls.listen", format!("{addr} is also in server.listen")));
        }
        Ok(Server {
            listen,
            workers,
            drain_timeout: self.duration(&raw.drain_timeout, "server.drain_timeout", "30s")?,
            max_connections: self.count(&raw.max_connections, "server.max_connections", 10_000, 1)? as usize,
            tls,
            request_buffer: self.count(&raw.request_buffer, "server.request_buffer", 64 * 1024, 0)? as usize,
            response_buffer: self.count(&raw.response_buffer, "server.response_buffer", 64 * 1024, 0)? as usize,
        })
    }

    fn timeouts(&self, raw: Option<&raw::Timeouts>) -> Res<Timeouts> {
        let default = raw::Timeouts::default();
        let raw = raw.unwrap_or(&default);
        Ok(Timeouts {
            connect: self.duration(&raw.connect, "timeouts.connect", "2s")?,
            response: self.duration(&raw.response, "timeouts.response", "60s")?,
            client_idle: self.duration(&raw.client_idle, "timeouts.client_idle", "75s")?,
            client_header: self.duration(&raw.client_header, "timeouts.client_header", "10s")?,
            upstream_idle: self.duration(&raw.upstream_idle, "timeouts.upstream_idle", "4s")?,
            client_body: self.duration(&raw.client_body, "timeouts.client_body", "60s")?,
            client_send: self.duration(&raw.client_send, "timeouts.client_send", "60s")?,
            tunnel_idle: self.duration(&raw.tunnel_idle, "timeouts.tunnel_idle", "1h")?,
            queue: self.duration(&raw.queue, "timeouts.queue", "5s")?,
        })
    }

    fn cookie_name(&self, value: &Option<Spanned<impl AsRef<str>>>, key: &str, default: &str) -> Res<String> {
        let Some(value) = value else { return Ok(default.to_string()) };
        let name = value.get_ref().as_ref();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(self.error(value.span(), key, format!("{name:?} is not a valid cookie name")));
        }
        Ok(name.to_string())
    }

    fn sticky(&self, raw: Option<&raw::Sticky>) -> Res<Sticky> {
        let default = raw::Sticky::default();
        let raw = raw.unwrap_or(&default);
        let header = match &raw.header {
            None => None,
            Some(h) => Some(http::HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                self.error(h.span(), "sticky.header", format!("{:?} is not a valid header name", h.get_ref()))
            })?),
        };
        let new_key = match raw.new_key.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("random", _)) => NewKey::Random,
            Some(("client_ip", _)) => NewKey::ClientIp,
            Some((other, span)) => {
                return Err(self.error(
                    span,
                    "sticky.new_key",
                    format!("expected \"random\" or \"client_ip\", got {other:?}"),
                ));
            }
        };
        Ok(Sticky {
            cookie: self.cookie_name(&raw.cookie, "sticky.cookie", "cutover_id")?,
            max_age: self.duration(&raw.max_age, "sticky.max_age", "30d")?,
            header,
            new_key,
        })
    }

    fn beta(&self, raw: Option<&raw::Beta>) -> Res<Beta> {
        let default = raw::Beta::default();
        let raw = raw.unwrap_or(&default);
        let enroll_path = match &raw.enroll_path {
            None => None,
            Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#']) => {
                Some(p.get_ref().to_string())
            }
            Some(p) => {
                return Err(self.error(
                    p.span(),
                    "beta.enroll_path",
                    "expected a path starting with \"/\", without query",
                ));
            }
        };
        Ok(Beta {
            cookie: self.cookie_name(&raw.cookie, "beta.cookie", "cutover_beta")?,
            secret_file: raw.secret_file.as_ref().map(|p| self.path(p)),
            secret: raw
                .secret_file
                .as_ref()
                .map(|p| self.read_secret(p, "beta.secret_file", "beta secret"))
                .transpose()?,
            enroll_path,
            enroll_ttl: self.duration(&raw.enroll_ttl, "beta.enroll_ttl", "30d")?,
        })
    }

    fn admin(&self, raw: &raw::Admin) -> Res<Admin> {
        let listen = match &raw.listen {
            None => AdminListen::Unix(PathBuf::from("/run/cutover/admin.sock")),
            Some(v) => match v.get_ref().strip_prefix("unix:") {
                Some("") => return Err(self.error(v.span(), "admin.listen", "expected a socket path after \"unix:\"")),
                Some(path) => AdminListen::Unix(self.path(&Spanned::new(v.span(), path.to_string()))),
                None => AdminListen::Tcp(self.socket_addr(v, "admin.listen").map_err(|mut e| {
                    e.message = format!(
                        "expected \"unix:/path/to/admin.sock\" or an address such as \"127.0.0.1:9901\", got {:?}",
                        v.get_ref()
                    );
                    e
                })?),
            },
        };
        let token = raw
            .token_file
            .as_ref()
            .map(|p| self.read_secret(p, "admin.token_file", "admin token"))
            .transpose()?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    let span = raw.token_file.as_ref().map(|t| t.span()).unwrap_or(0..0);
                    self.error(span, "admin.token_file", "the token must be UTF-8 text")
                })
            })
            .transpose()?;
        if matches!(listen, AdminListen::Tcp(_)) && token.is_none() {
            let span = raw.listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
            return Err(self.error(
                span,
                "admin.token_file",
                "a TCP admin listener requires token_file (bearer token)",
            ));
        }
        Ok(Admin { listen, token_file: raw.token_file.as_ref().map(|p| self.path(p)), token })
    }

    fn metrics(&self, raw: &raw::Metrics) -> Res<Metrics> {
        let listen = match &raw.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 9464)),
            Some(v) => self.socket_addr(v, "metrics.listen")?,
        };
        Ok(Metrics { listen })
    }

    fn log(&self, raw: Option<&raw::Log>) -> Res<Log> {
        let default = raw::Log::default();
        let raw = raw.unwrap_or(&default);
        let access = match raw.access.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("json", _)) => AccessLog::Json,
            Some(("off", _)) => AccessLog::Off,
            Some((other, span)) => {
                return Err(self.error(span, "log.access", format!("expected \"json\" or \"off\", got {other:?}")));
            }
        };
        let buffer = match &raw.buffer {
            None => 64 * 1024,
            Some(size) => parse_size(size.get_ref()).filter(|n| (4096..=16 << 20).contains(n)).ok_or_else(|| {
                self.error(
                    size.span(),
                    "log.buffer",
                    match size.get_ref() {
                        raw::Size::Bytes(n) => {
                            format!("expected a size from \"4k\" to \"16m\", such as \"64k\", got {n}")
                        }
                        raw::Size::Text(t) => {
                            format!("expected a size from \"4k\" to \"16m\", such as \"64k\", got {t:?}")
                        }
                    },
                )
            })?,
        };
        let sample = match &raw.sample {
            None => 1.0,
            Some(s) if s.get_ref().0 > 0.0 && s.get_ref().0 <= 1.0 => s.get_ref().0,
            Some(s) => {
                return Err(self.error(
                    s.span(),
                    "log.sample",
                    "expected a fraction above 0 and at most 1, such as 0.01",
                ));
            }
        };
        Ok(Log {
            access,
            access_path: raw.access_path.as_ref().map(|p| self.path(p)),
            buffer,
            flush: self.duration(&raw.flush, "log.flush", "1s")?,
            sample,
        })
    }

    fn state(&self, raw: &raw::State) -> State {
        State {
            path: raw
                .path
                .as_ref()
                .map(|p| self.path(p))
                .unwrap_or_else(|| PathBuf::from("/var/lib/cutover/state.json")),
        }
    }

    fn fleet(&self, raw: &raw::Fleet, span: Range<usize>) -> Res<Fleet> {
        let Some(list) = &raw.etcd else {
            return Err(self.error(
                span,
                "fleet.etcd",
                "expected the etcd client URLs, such as [\"http://10.0.1.5:2379\"]",
            ));
        };
        if list.get_ref().is_empty() {
            return Err(self.error(list.span(), "fleet.etcd", "expected at least one etcd URL"));
        }
        let mut etcd = Vec::new();
        for url in list.get_ref() {
            let text = url.get_ref().trim().trim_end_matches('/');
            let authority = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
            if !authority.is_some_and(is_authority) {
                return Err(self.error(
                    url.span(),
                    "fleet.etcd",
                    format!("expected a URL such as \"http://10.0.1.5:2379\", got {:?}", url.get_ref()),
                ));
            }
            etcd.push(text.to_string());
        }
        let prefix = match &raw.prefix {
            None => "/cutover".to_string(),
            Some(p) => {
                let text = p.get_ref().trim_end_matches('/');
                if !text.starts_with('/') || text.contains("//") || text.chars().any(char::is_control) {
                    return Err(self.error(
                        p.span(),
                        "fleet.prefix",
                        format!("expected a key prefix such as \"/cutover/prod\", got {:?}", p.get_ref()),
                    ));
                }
                text.to_string()
            }
        };
        let name = match &raw.name {
            Some(n) if is_name(n.get_ref()) => n.get_ref().clone(),
            Some(n) => return Err(self.error(n.span(), "fleet.name", NAME_RULE)),
            None => host_name(),
        };
        let lease = self.duration(&raw.lease, "fleet.lease", "5s")?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&lease) || lease.subsec_nanos() != 0 {
            let span = raw.lease.as_ref().map(|l| l.span()).unwrap_or(span.clone());
            return Err(self.error(
                span,
                "fleet.lease",
                "expected whole seconds from 1s to 1h (etcd leases count in seconds)",
            ));
        }
        let password = match (&raw.username, &raw.password_file) {
            (Some(_), Some(p)) => {
                let bytes = std::fs::read(self.path(p)).map_err(|e| {
                    self.error(p.span(), "fleet.password_file", format!("cannot read {}: {e}", self.path(p).display()))
                })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| self.error(p.span(), "fleet.password_file", "the password must be UTF-8 text"))?;
                Some(text.trim_end().to_string())
            }
            (None, None) => None,
            (Some(u), None) => {
                return Err(self.error(u.span(), "fleet.password_file", "username needs a password_file"));
            }
            (None, Some(p)) => return Err(self.error(p.span(), "fleet.username", "password_file needs a username")),
        };
        let tls = raw.tls.as_ref().map(|t| {
            let t = t.get_ref();
            FleetTls {
                ca: t.ca.as_ref().map(|p| self.path(p)),
                cert: t.cert.as_ref().map(|p| self.path(p)),
                key: t.key.as_ref().map(|p| self.path(p)),
            }
        });
        if let (Some(t), Some(spanned)) = (&tls, &raw.tls) {
            if t.cert.is_some() != t.key.is_some() {
                return Err(self.error(spanned.span(), "fleet.tls", "cert and key go together (client certificate)"));
            }
            if etcd.iter().any(|u| u.starts_with("http://")) {
                return Err(self.error(spanned.span(), "fleet.tls", "with tls, every etcd URL must be https://"));
            }
        }
        Ok(Fleet {
            etcd,
            prefix,
            name,
            lease,
            username: raw.username.as_ref().map(|u| u.get_ref().clone()),
            password_file: raw.password_file.as_ref().map(|p| self.path(p)),
            password,
            tls,
        })
    }

    fn retries(&self, raw: Option<&raw::Retries>) -> Res<Retries> {
        let default = raw::Retries::default();
        let raw = raw.unwrap_or(&default);
        let budget_ratio = match &raw.budget_ratio {
            None => 0.1,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => return Err(self.error(r.span(), "retries.budget_ratio", "expected a fraction from 0.0 to 1.0")),
        };
        Ok(Retries {
            attempts: self.count(&raw.attempts, "retries.attempts", 1, 0)?.min(1),
            budget_ratio,
            budget_min_per_sec: self.count(&raw.budget_min_per_sec, "retries.budget_min_per_sec", 10, 0)?,
        })
        .and_then(|r| match &raw.attempts {
            Some(a) if *a.get_ref() > 1 => {
                Err(self.error(a.span(), "retries.attempts", "expected 0 or 1 (one retry on another backend at most)"))
            }
            _ => Ok(r),
        })
    }

    fn pools(&self, raw: &BTreeMap<Spanned<String>, Spanned<raw::Pool>>) -> Res<BTreeMap<String, Pool>> {
        let mut pools = BTreeMap::new();
        for (name, pool) in raw {
            crate::pace::point();
            let key = format!("pools.{}", name.get_ref());
            if !is_name(name.get_ref()) {
                return Err(self.error(name.span(), &key, NAME_RULE));
            }
            let pool = pool.get_ref();
            let backends_key = format!("{key}.backends");
            if pool.backends.get_ref().is_empty() {
                return Err(self.error(
                    pool.backends.span(),
                    &backends_key,
                    "expected at least one backend \"host:port\"",
                ));
            }
            let mut backends = Vec::new();
            for b in pool.backends.get_ref().iter() {
                let addr = b.get_ref().trim();
                if !is_authority(addr) {
                    return Err(self.error(
                        b.span(),
                        &backends_key,
                        format!("expected \"host:port\" such as \"10.0.1.10:8080\", got {addr:?}"),
                    ));
                }
                if backends.iter().any(|x: &String| x == addr) {
                    return Err(self.error(b.span(), &backends_key, format!("{addr} is listed twice")));
                }
                backends.push(addr.to_string());
            }
            let balance = match pool.balance.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
                None | Some(("round_robin", _)) => Balance::RoundRobin,
                Some(("least_requests", _)) => Balance::LeastRequests,
                Some((other, span)) => {
                    return Err(self.error(
                        span,
                        &format!("{key}.balance"),
                        format!("expected \"round_robin\" or \"least_requests\", got {other:?}"),
                    ));
                }
            };
            let health = pool.health.as_ref().map(|h| self.health(h.get_ref(), &key)).transpose()?;
            let eject = self.eject(pool.eject.as_ref().map(|e| e.get_ref()), &key)?;
            let tls = pool.tls.as_ref().map(|t| {
                let t = t.get_ref();
                UpstreamTls {
                    ca: t.ca.as_ref().map(|p| self.path(p)),
                    sni: t.sni.as_ref().map(|s| s.get_ref().clone()),
                }
            });
            let max_connections = self.count(&pool.max_connections, &format!("{key}.max_connections"), 0, 0)?;
            let max_queue = self.count(&pool.max_queue, &format!("{key}.max_queue"), 1024, 0)?;
            pools.insert(
                name.get_ref().clone(),
                Pool { backends, balance, health, eject, tls, max_connections, max_queue },
            );
        }
        Ok(pools)
    }

    fn health(&self, raw: &raw::Health, pool_key: &str) -> Res<HealthCheck> {
        let key = |k: &str| format!("{pool_key}.health.{k}");
        let path = match &raw.path {
            None => "/healthz".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().to_string(),
            Some(p) => return Err(self.error(p.span(), &key("path"), "expected a path starting with \"/\"")),
        };
        let check = HealthCheck {
            path,
            interval: self.duration(&raw.interval, &key("interval"), "2s")?,
            timeout: self.duration(&raw.timeout, &key("timeout"), "1s")?,
            unhealthy_after: self.count(&raw.unhealthy_after, &key("unhealthy_after"), 3, 1)?,
            healthy_after: self.count(&raw.healthy_after, &key("healthy_after"), 2, 1)?,
        };
        if let Some(t) = &raw.timeout
            && check.timeout > check.interval
        {
            return Err(self.error(t.span(), &key("timeout"), "must not be longer than the interval"));
        }
        Ok(check)
    }

    fn eject(&self, raw: Option<&raw::Eject>, pool_key: &str) -> Res<Eject> {
        let default = raw::Eject::default();
        let raw = raw.unwrap_or(&default);
        let key = |k: &str| format!("{pool_key}.eject.{k}");
        let eject = Eject {
            after: self.count(&raw.after, &key("after"), 3, 1)?,
            base: self.duration(&raw.base, &key("base"), "5s")?,
            max: self.duration(&raw.max, &key("max"), "60s")?,
            timeouts: raw.timeouts.as_ref().is_none_or(|t| *t.get_ref()),
        };
        if eject.max < eject.base {
            let span = raw.max.as_ref().map(|m| m.span()).unwrap_or(0..0);
            return Err(self.error(span, &key("max"), "must not be shorter than eject.base"));
        }
        Ok(eject)
    }

    fn routes(&self, raw: &[Spanned<raw::Route>], pools: &BTreeMap<String, Pool>) -> Res<Vec<Route>> {
        if raw.is_empty() {
            return Err(ConfigError {
                file: self.file.to_string(),
                line: None,
                key: "routes".into(),
                message: "expected at least one [[routes]] table".into(),
            });
        }
        let mut names = HashSet::new();
        let mut places = HashSet::new();
        let mut routes = Vec::new();
        for (i, spanned) in raw.iter().enumerate() {
            crate::pace::point();
            let r = spanned.get_ref();
            let key = |k: &str| format!("routes[{i}].{k}");
            let name = r.name.get_ref();
            if !is_name(name) {
                return Err(self.error(r.name.span(), &key("name"), NAME_RULE));
            }
            if !names.insert(name.clone()) {
                return Err(self.error(r.name.span(), &key("name"), format!("route {name:?} is defined twice")));
            }
            let host = match &r.host {
                None => HostPattern::Any,
                Some(h) => parse_host(h.get_ref()).ok_or_else(|| {
                    self.error(
                        h.span(),
                        &key("host"),
                        format!("expected \"example.com\", \"*.example.com\" or \"*\", got {:?}", h.get_ref()),
                    )
                })?,
            };
            let path_prefix = match &r.path_prefix {
                None => "/".to_string(),
                Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#']) => p.get_ref().to_string(),
                Some(p) => {
                    return Err(self.error(
                        p.span(),
                        &key("path_prefix"),
                        "expected a path starting with \"/\", without query",
                    ));
                }
            };
            if !places.insert((host.clone(), path_prefix.clone())) {
                return Err(self.error(
                    spanned.span(),
                    &key("path_prefix"),
                    format!("another route already serves host {host} with path_prefix {path_prefix:?}"),
                ));
            }
            let pool_ref = |v: &raw::Text, k: &str| -> Res<String> {
                if pools.contains_key(v.get_ref()) {
                    Ok(v.get_ref().clone())
                } else {
                    let known: Vec<&str> = pools.keys().map(String::as_str).collect();
                    Err(self.error(
                        v.span(),
                        &key(k),
                        format!("no pool named {:?} (pools: {})", v.get_ref(), known.join(", ")),
                    ))
                }
            };
            let stable = pool_ref(&r.stable, "stable")?;
            let canary = r.canary.as_ref().map(|c| pool_ref(c, "canary")).transpose()?;
            if canary.as_deref() == Some(stable.as_str()) {
                let span = r.canary.as_ref().map(|c| c.span()).unwrap_or(0..0);
                return Err(self.error(span, &key("canary"), "must name a different pool than stable"));
            }
            let weight = match &r.weight {
                None => Weight::ZERO,
                Some(w) => Weight::from_percent(w.get_ref().0).ok_or_else(|| {
                    self.error(
                        w.span(),
                        &key("weight"),
                        format!("expected a percentage from 0 to 100 with at most two decimals, got {}", w.get_ref().0),
                    )
                })?,
            };
            if canary.is_none() && weight != Weight::ZERO {
                let span = r.weight.as_ref().map(|w| w.span()).unwrap_or(0..0);
                return Err(self.error(span, &key("weight"), "a route without a canary pool must have weight 0"));
            }
            routes.push(Route { name: name.clone(), host, path_prefix, stable, canary, weight });
        }
        Ok(routes)
    }
}

/// The host name (a replica's default fleet name), made a valid name.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    if name.is_empty() { "cutover".into() } else { name }
}

const NAME_RULE: &str = "expected a name of 1 to 64 letters, digits, '-', '_' or '.'";

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// RFC 6265 cookie-name is an RFC 9110 token.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_host(s: &str) -> Option<HostPattern> {
    let s = s.trim().to_ascii_lowercase();
    if s == "*" {
        return Some(HostPattern::Any);
    }
    if let Some(rest) = s.strip_prefix("*.") {
        return is_hostname(rest).then(|| HostPattern::Wildcard(format!(".{rest}")));
    }
    is_hostname(&s).then_some(HostPattern::Exact(s))
}

/// `host:port` with a hostname, an IPv4 address or a bracketed IPv6 address.
fn is_authority(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok_and(|p| p != 0) && is_hostname(host),
        None => false,
    }
}

/// Bytes in `65536`, `"64k"`, `"64KiB"`, `"1m"` or `"1MiB"`.
fn parse_size(size: &raw::Size) -> Option<usize> {
    let text = match size {
        raw::Size::Bytes(n) => return usize::try_from(*n).ok(),
        raw::Size::Text(t) => t.trim(),
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = match unit.trim() {
        "" => 1,
        "k" | "K" | "KiB" | "kB" => 1024,
        "m" | "M" | "MiB" | "MB" => 1024 * 1024,
        _ => return None,
    };
    number.parse::<usize>().ok()?.checked_mul(unit)
}
