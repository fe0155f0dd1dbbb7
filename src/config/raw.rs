//! The file format as written: serde structures that mirror the TOML one to one.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that names
//! the key and its line. Values that need checks beyond their TOML type are kept
//! `Spanned`, so [`super::validate`] can point at the line of a bad value.
//! A string with a meaning (a duration, an address...) is an `Of<Kind>`, so a
//! value of the wrong type is reported with what that key expects.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::kinds::{
    AccessLog, Address, AdminListen, Backend, Balance, CookieName, Duration, FilePath, HeaderName, Host, List, NewKey,
    Str, UrlPath,
};
pub use super::kinds::{Fraction, Percent, Size};

pub type Text = Spanned<String>;
/// A string of one kind (see [`super::kinds`]).
pub type Of<K> = Spanned<Str<K>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Option<Spanned<Server>>,
    #[serde(default)]
    pub timeouts: Option<Spanned<Timeouts>>,
    #[serde(default)]
    pub sticky: Option<Spanned<Sticky>>,
    #[serde(default)]
    pub beta: Option<Spanned<Beta>>,
    #[serde(default)]
    pub admin: Option<Spanned<Admin>>,
    #[serde(default)]
    pub metrics: Option<Spanned<Metrics>>,
    #[serde(default)]
    pub log: Option<Spanned<Log>>,
    #[serde(default)]
    pub state: Option<Spanned<State>>,
    #[serde(default)]
    pub retries: Option<Spanned<Retries>>,
    #[serde(default)]
    pub fleet: Option<Spanned<Fleet>>,
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, Spanned<Pool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<Spanned<List<Address>>>,
    pub workers: Option<Spanned<i64>>,
    pub drain_timeout: Option<Of<Duration>>,
    pub max_connections: Option<Spanned<i64>>,
    pub tls: Option<Spanned<ServerTls>>,
    pub request_buffer: Option<Spanned<i64>>,
    pub response_buffer: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub listen: Spanned<List<Address>>,
    pub certs: Spanned<Vec<Spanned<CertPair>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: Of<FilePath>,
    pub key: Of<FilePath>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<Of<Duration>>,
    pub response: Option<Of<Duration>>,
    pub client_idle: Option<Of<Duration>>,
    pub client_header: Option<Of<Duration>>,
    pub upstream_idle: Option<Of<Duration>>,
    pub client_body: Option<Of<Duration>>,
    pub client_send: Option<Of<Duration>>,
    pub tunnel_idle: Option<Of<Duration>>,
    pub queue: Option<Of<Duration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    pub cookie: Option<Of<CookieName>>,
    pub max_age: Option<Of<Duration>>,
    pub header: Option<Of<HeaderName>>,
    pub new_key: Option<Of<NewKey>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beta {
    pub cookie: Option<Of<CookieName>>,
    pub secret_file: Option<Of<FilePath>>,
    pub enroll_path: Option<Of<UrlPath>>,
    pub enroll_ttl: Option<Of<Duration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Of<AdminListen>>,
    pub token_file: Option<Of<FilePath>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Option<Of<Address>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub access: Option<Of<AccessLog>>,
    pub access_path: Option<Of<FilePath>>,
    pub buffer: Option<Spanned<Size>>,
    pub flush: Option<Of<Duration>>,
    pub sample: Option<Spanned<Fraction>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub path: Option<Of<FilePath>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: Option<Spanned<i64>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub budget_min_per_sec: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub etcd: Option<Spanned<Vec<Text>>>,
    pub prefix: Option<Text>,
    pub name: Option<Text>,
    pub lease: Option<Text>,
    pub username: Option<Text>,
    pub password_file: Option<Text>,
    pub tls: Option<Spanned<FleetTls>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTls {
    pub ca: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Text,
    pub host: Option<Of<Host>>,
    pub path_prefix: Option<Of<UrlPath>>,
    pub stable: Text,
    pub canary: Option<Text>,
    pub weight: Option<Spanned<Percent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub backends: Spanned<List<Backend>>,
    pub balance: Option<Of<Balance>>,
    pub health: Option<Spanned<Health>>,
    pub eject: Option<Spanned<Eject>>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_queue: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: Option<Of<UrlPath>>,
    pub interval: Option<Of<Duration>>,
    pub timeout: Option<Of<Duration>>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eject {
    pub after: Option<Spanned<i64>>,
    pub base: Option<Of<Duration>>,
    pub max: Option<Of<Duration>>,
    pub timeouts: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<Of<FilePath>>,
    pub sni: Option<Text>,
}
