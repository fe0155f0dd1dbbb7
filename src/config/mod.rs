//! The config file: TOML text in, a fully validated [`Config`] out.
//!
//! Parsing is strict: unknown keys are errors, and every error names the file,
//! the line and the key, and says what was expected. Files the config points to
//! (beta secret, admin token) are read here too, so a config that loads is a
//! config that can run, and a reload picks up a rotated secret.

mod diagnose;
mod kinds;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::parse;

/// Canary weight in basis points: 0..=10000 is 0%..=100% in steps of 0.01%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u16);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(10_000);

    pub fn from_basis_points(bp: u16) -> Option<Weight> {
        (bp <= 10_000).then_some(Weight(bp))
    }

    /// Accepts a percentage with at most two decimals, 0 to 100.
    pub fn from_percent(percent: f64) -> Option<Weight> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return None;
        }
        let bp = (percent * 100.0).round();
        if (percent * 100.0 - bp).abs() > 1e-6 {
            return None;
        }
        Some(Weight(bp as u16))
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(100) { write!(f, "{}%", self.0 / 100) } else { write!(f, "{}%", self.percent()) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    pub server: Server,
    pub timeouts: Timeouts,
    pub sticky: Sticky,
    pub beta: Beta,
    pub admin: Option<Admin>,
    pub metrics: Option<Metrics>,
    pub log: Log,
    pub state: Option<State>,
    pub retries: Retries,
    pub routes: Vec<Route>,
    pub pools: BTreeMap<String, Pool>,
    /// Several replicas sharing one live state through etcd (DESIGN §7).
    pub fleet: Option<Fleet>,
}

/// `[fleet]`: where the shared live state lives and who this replica is.
#[derive(Clone, PartialEq)]
pub struct Fleet {
    /// etcd client URLs, `http://host:port` or `https://host:port`.
    pub etcd: Vec<String>,
    /// Every key of this front door lives under it (no trailing `/`).
    pub prefix: String,
    /// This replica's name; default: the host name.
    pub name: String,
    pub lease: Duration,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The password read from `password_file` (trailing whitespace removed).
    pub password: Option<String>,
    pub tls: Option<FleetTls>,
}

/// Debug leaves out what differs between replicas of one front door (the
/// name) and the secret, so the config hash agrees across the fleet.
impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("etcd", &self.etcd)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    pub drain_timeout: Duration,
    /// Connections per worker beyond which new ones wait in the kernel backlog.
    pub max_connections: usize,
    pub tls: Option<ServerTls>,
    /// Request body bytes read into memory before a backend is contacted
    /// (a body that ends within it is sent whole, and can be sent again);
    /// 0 streams every body from its first byte.
    pub request_buffer: usize,
    /// Response body bytes read ahead of a slow client, per request, so
    /// that a short answer frees its backend connection at once.
    pub response_buffer: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub listen: Vec<SocketAddr>,
    /// The first pair is the default certificate when no SNI name matches.
    pub certs: Vec<CertPair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub client_idle: Duration,
    pub client_header: Duration,
    /// How long an idle pooled upstream connection is kept. Below the usual
    /// application keep-alive (Node.js closes after 5 s) so that the proxy,
    /// not the backend, closes idle connections.
    pub upstream_idle: Duration,
    /// Longest wait between two reads of a request body (nginx's
    /// `client_body_timeout`).
    pub client_body: Duration,
    /// Longest wait for a client to take response bytes (nginx's `send_timeout`).
    pub client_send: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
    /// Longest wait in a backend's queue for a free slot (`max_connections`).
    pub queue: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKey {
    Random,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Duration,
    pub header: Option<http::HeaderName>,
    pub new_key: NewKey,
}

#[derive(Clone, PartialEq)]
pub struct Beta {
    pub cookie: String,
    pub secret_file: Option<PathBuf>,
    /// The secret read from `secret_file` (trailing newline removed).
    pub secret: Option<Vec<u8>>,
    pub enroll_path: Option<String>,
    /// Lifetime of cookies set by the enroll path.
    pub enroll_ttl: Duration,
}

impl fmt::Debug for Beta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Beta")
            .field("cookie", &self.cookie)
            .field("secret_file", &self.secret_file)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("enroll_path", &self.enroll_path)
            .field("enroll_ttl", &self.enroll_ttl)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
            AdminListen::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

#[derive(Clone, PartialEq)]
pub struct Admin {
    pub listen: AdminListen,
    pub token_file: Option<PathBuf>,
    /// The bearer token read from `token_file` (surrounding whitespace removed).
    pub token: Option<String>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Json,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLog,
    /// None: standard output.
    pub access_path: Option<PathBuf>,
    /// Bytes a worker buffers before the writer takes them (nginx's `buffer=`).
    pub buffer: usize,
    /// The longest a line waits in a buffer (nginx's `flush=`).
    pub flush: Duration,
    /// The share of successful requests logged; errors always are.
    pub sample: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Extra attempts for a safe request whose connection failed before any
    /// response byte (0 disables retries).
    pub attempts: u32,
    /// Retries allowed as a fraction of recent requests.
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic.
    pub budget_min_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `example.com` (stored lower-case).
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com` (lower-case).
    Wildcard(String),
    /// `*`
    Any,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub host: HostPattern,
    pub path_prefix: String,
    pub stable: String,
    pub canary: Option<String>,
    pub weight: Weight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub backends: Vec<String>,
    pub balance: Balance,
    pub health: Option<HealthCheck>,
    pub eject: Eject,
    pub tls: Option<UpstreamTls>,
    /// Requests in flight per backend (HAProxy's `maxconn`); 0: no limit.
    pub max_connections: u32,
    /// Requests waiting per backend for a slot; more get 503 at once.
    pub max_queue: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// Passive failure detection: `after` consecutive failed attempts (connection
/// failures, and response timeouts when `timeouts` is on) eject a backend for
/// `base`, doubling on each ejection in a row up to `max`.
#[derive(Clone, PartialEq)]
pub struct Eject {
    pub after: u32,
    pub base: Duration,
    pub max: Duration,
    /// A response timeout counts as a failure, so a hung backend leaves the
    /// rotation without active checks.
    pub timeouts: bool,
}

/// `timeouts` shows only when off, so a config that leaves it at its default
/// keeps the [`Config::fingerprint`] it had before the key existed.
impl fmt::Debug for Eject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Eject");
        s.field("after", &self.after).field("base", &self.base).field("max", &self.max);
        if !self.timeouts {
            s.field("timeouts", &self.timeouts);
        }
        s.finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
}

/// A config error: which file, which line, which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        parse(&text, &path.display().to_string(), base)
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// A short stable fingerprint of the config text's meaning, for
    /// `cutover_config_info{hash}` and `ctl status`: replicas that print the
    /// same hash route the same way.
    pub fn fingerprint(&self) -> String {
        use fmt::Write as _;
        /// Feeds formatted text straight into the digest (a 1000-route
        /// config formats to ~0.5 MB; no need to hold it).
        struct Digest(ring::digest::Context);
        impl fmt::Write for Digest {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0.update(s.as_bytes());
                Ok(())
            }
        }
        // Every field but the source path (where the file lives, not what it
        // says). The text is what `{:?}` printed with `source: ".."` cut out,
        // so replicas on older releases show the same hash for the same config.
        let Config {
            source: _,
            server,
            timeouts,
            sticky,
            beta,
            admin,
            metrics,
            log,
            state,
            retries,
            routes,
            pools,
            fleet,
        } = self;
        let mut canon = Digest(ring::digest::Context::new(&ring::digest::SHA256));
        // Formatting into the digest cannot fail.
        let _ = write!(
            canon,
            "Config {{ , server: {server:?}, timeouts: {timeouts:?}, sticky: {sticky:?}, beta: {beta:?}, \
             admin: {admin:?}, metrics: {metrics:?}, log: {log:?}, state: {state:?}, retries: {retries:?}, \
             routes: ["
        );
        // Route by route, as `{:?}` of the list prints them, with pauses.
        for (i, route) in routes.iter().enumerate() {
            crate::pace::point();
            let _ = write!(canon, "{}{route:?}", if i == 0 { "" } else { ", " });
        }
        let _ = write!(canon, "], pools: {pools:?}");
        // Absent, [fleet] adds nothing: a config without it keeps the hash
        // earlier releases computed.
        if let Some(fleet) = fleet {
            let _ = write!(canon, ", fleet: Some({fleet:?})");
        }
        let _ = write!(canon, " }}");
        let digest = canon.0.finish();
        digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::routing::tests::CONFIG as TEXT;

    #[test]
    fn the_fingerprint_is_the_digest_of_the_config_without_its_path() {
        let config = parse(TEXT, "/etc/cutover/cutover.toml", Path::new("/etc/cutover")).unwrap();
        // The definition replicas of earlier releases compute: the debug text
        // with the source field cut out.
        let text = format!("{config:?}").replacen(&format!("source: {:?}", config.source), "", 1).replacen(
            ", fleet: None",
            "",
            1,
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let expected: String = digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(config.fingerprint(), expected);

        let elsewhere = parse(TEXT, "/srv/cutover.toml", Path::new("/etc/cutover")).unwrap();
        assert_eq!(elsewhere.fingerprint(), expected, "where the file lives is not what it says");
        let heavier = parse(&TEXT.replace("weight = 5", "weight = 6"), "/srv/cutover.toml", Path::new("/")).unwrap();
        assert_ne!(heavier.fingerprint(), expected);
    }

    #[test]
    fn log_batching_and_sampling_keys() {
        let config = parse(TEXT, "c.toml", Path::new("/")).unwrap();
        assert_eq!((config.log.buffer, config.log.flush, config.log.sample), (65536, Duration::from_secs(1), 1.0));
        let with = |keys: &str| parse(&format!("[log]\n{keys}\n{TEXT}"), "c.toml", Path::new("/"));
        let log = with("buffer = \"256k\"\nflush = \"250ms\"\nsample = 0.01").unwrap().log;
        assert_eq!((log.buffer, log.flush, log.sample), (256 * 1024, Duration::from_millis(250), 0.01));
        assert_eq!(with("buffer = 8192").unwrap().log.buffer, 8192);
        assert_eq!(with("buffer = \"1MiB\"").unwrap().log.buffer, 1 << 20);
        for (keys, key) in [
            ("buffer = \"1k\"", "log.buffer"),
            ("buffer = \"64q\"", "log.buffer"),
            ("buffer = -1", "log.buffer"),
            ("flush = \"0s\"", "log.flush"),
            ("sample = 0", "log.sample"),
            ("sample = 1.5", "log.sample"),
        ] {
            let e = with(keys).expect_err(keys);
            assert_eq!((e.key.as_str(), e.line), (key, Some(2)), "{keys}: {e}");
        }
    }

    #[test]
    fn a_key_left_at_its_default_keeps_the_fingerprint_it_had_before_the_key_existed() {
        let with = |eject: &str| {
            let text =
                TEXT.replacen("backends = [\"127.0.0.1:1\"]", &format!("backends = [\"127.0.0.1:1\"]\n{eject}"), 1);
            parse(&text, "cutover.toml", Path::new("/")).unwrap().fingerprint()
        };
        let before = with("");
        assert_eq!(with("eject = { timeouts = true }"), before);
        assert_ne!(with("eject = { timeouts = false }"), before);
    }
}

#[cfg(test)]
mod fleet_tests;
