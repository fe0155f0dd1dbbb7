//! The file format as written: serde structures that mirror the TOML one to one.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that names
//! the key and its line. Values that need checks beyond their TOML type are kept
//! `Spanned`, so [`super::validate`] can point at the line of a bad value.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Text = Spanned<String>;

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
    pub routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, Spanned<Pool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<Spanned<Vec<Text>>>,
    pub workers: Option<Spanned<i64>>,
    pub drain_timeout: Option<Text>,
    pub max_connections: Option<Spanned<i64>>,
    pub tls: Option<Spanned<ServerTls>>,
    pub request_buffer: Option<Spanned<i64>>,
    pub response_buffer: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub listen: Spanned<Vec<Text>>,
    pub certs: Spanned<Vec<Spanned<CertPair>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: Text,
    pub key: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<Text>,
    pub response: Option<Text>,
    pub client_idle: Option<Text>,
    pub client_header: Option<Text>,
    pub upstream_idle: Option<Text>,
    pub client_body: Option<Text>,
    pub client_send: Option<Text>,
    pub tunnel_idle: Option<Text>,
    pub queue: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    pub cookie: Option<Text>,
    pub max_age: Option<Text>,
    pub header: Option<Text>,
    pub new_key: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beta {
    pub cookie: Option<Text>,
    pub secret_file: Option<Text>,
    pub enroll_path: Option<Text>,
    pub enroll_ttl: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Text>,
    pub token_file: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub access: Option<Text>,
    pub access_path: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub path: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: Option<Spanned<i64>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub budget_min_per_sec: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Text,
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub stable: Text,
    pub canary: Option<Text>,
    pub weight: Option<Spanned<Number>>,
}

/// A weight may be written `5` or `2.5`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub backends: Spanned<Vec<Text>>,
    pub balance: Option<Text>,
    pub health: Option<Spanned<Health>>,
    pub eject: Option<Spanned<Eject>>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_queue: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eject {
    pub after: Option<Spanned<i64>>,
    pub base: Option<Text>,
    pub max: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<Text>,
    pub sni: Option<Text>,
}
