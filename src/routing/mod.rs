//! The routing decision: a pure function of (rules, request head) that says
//! which route, which version and which pool serve a request, and whether the
//! user needs a new assignment cookie. No I/O, no clock, no randomness of its
//! own: the caller passes the time and a source of fresh ids.
//!
//! Order of precedence (DESIGN §1): halted route → beta cookie → weighted
//! sticky bucket → health fallback.

pub mod beta;
pub mod cookies;
pub mod hash;
pub mod table;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use crate::config::{Config, NewKey, Weight};
use beta::{BetaChoice, BetaCookie, BetaRules};
pub use cookies::MintedKey;
use table::RouteTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::Stable, Version::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }

    pub fn other(self) -> Version {
        match self {
            Version::Stable => Version::Canary,
            Version::Canary => Version::Stable,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request went to its version (the `reason` label of
/// `cutover_assignments_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A first-time client; the proxy minted its key.
    New,
    /// The assignment cookie carried the key.
    Returning,
    /// The configured user header carried the key.
    Header,
    /// A beta cookie chose the version.
    Beta,
    /// The assigned pool had no healthy backend; the other pool served.
    Fallback,
    /// The route is rolled back: everyone goes to stable.
    Halted,
}

impl Reason {
    pub const ALL: [Reason; 6] =
        [Reason::New, Reason::Returning, Reason::Header, Reason::Beta, Reason::Fallback, Reason::Halted];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Returning => "returning",
            Reason::Header => "header",
            Reason::Beta => "beta",
            Reason::Fallback => "fallback",
            Reason::Halted => "halted",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One route as the decision sees it.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub name: Arc<str>,
    /// Index of the stable pool in [`Rules::pool_up`] (and the snapshot's pools).
    pub stable: usize,
    pub canary: Option<usize>,
    pub weight: Weight,
    pub halted: bool,
}

impl RouteRule {
    pub fn pool(&self, version: Version) -> Option<usize> {
        match version {
            Version::Stable => Some(self.stable),
            Version::Canary => self.canary,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StickyRules {
    pub cookie: String,
    pub header: Option<HeaderName>,
    pub new_key: NewKey,
    /// `; Path=/; Max-Age=..; HttpOnly; SameSite=Lax`
    pub attributes: String,
}

/// Everything the decision reads: one immutable value per snapshot.
#[derive(Debug, Clone)]
pub struct Rules {
    pub routes: Vec<RouteRule>,
    /// Whether each pool has at least one healthy backend.
    pub pool_up: Vec<bool>,
    pub sticky: StickyRules,
    pub beta: BetaRules,
    table: RouteTable,
}

impl Rules {
    /// Rules for `config`'s routes with `pools` naming the pool indices, live
    /// weights and halted flags from `live(route name)`, every pool up.
    pub fn new(config: &Config, pools: &[&str], live: impl Fn(&str) -> (Weight, bool)) -> Rules {
        let index = |name: &str| pools.iter().position(|p| *p == name).unwrap_or(0);
        let routes = config
            .routes
            .iter()
            .map(|r| {
                crate::pace::point();
                let (weight, halted) = live(&r.name);
                RouteRule {
                    name: r.name.as_str().into(),
                    stable: index(&r.stable),
                    canary: r.canary.as_deref().map(index),
                    weight,
                    halted,
                }
            })
            .collect();
        Rules {
            routes,
            pool_up: vec![true; pools.len()],
            sticky: StickyRules {
                cookie: config.sticky.cookie.clone(),
                header: config.sticky.header.clone(),
                new_key: config.sticky.new_key,
                attributes: cookies::attributes(config.sticky.max_age.as_secs()),
            },
            beta: BetaRules::new(&config.beta.cookie, config.beta.secret.as_deref()),
            table: RouteTable::new(config.routes.iter().map(|r| (&r.host, r.path_prefix.as_str()))),
        }
    }

    pub fn find_route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.table.find(host, path)
    }
}

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// `Host` (HTTP/1) or the URI authority (HTTP/2).
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// Unix seconds, for beta cookie expiry.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub route: usize,
    /// The version the user is assigned to.
    pub assigned: Version,
    /// The version that serves the request (differs on fallback).
    pub version: Version,
    pub pool: usize,
    pub reason: Reason,
    pub bucket: u16,
    /// Set when the proxy minted the user's key: send it as a cookie.
    pub new_key: Option<MintedKey>,
    /// A beta cookie was present but not accepted (forged, expired, malformed).
    pub beta_rejected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Routed(Decision),
    /// No route matches the host and path.
    NoRoute,
    /// Neither of the route's pools has a healthy backend. The user is still
    /// assigned (and counted, and keeps a minted key): a 502 follows.
    Unavailable {
        route: usize,
        assigned: Version,
        reason: Reason,
        new_key: Option<MintedKey>,
    },
}

/// Decides where a request goes. `fresh_id` is called only when a first-time
/// client needs a random key.
pub fn decide(rules: &Rules, head: &Head<'_>, fresh_id: impl FnOnce() -> u64) -> Outcome {
    let Some(route_index) = rules.find_route(head.host, head.path) else {
        return Outcome::NoRoute;
    };
    let route = &rules.routes[route_index];
    let found = cookies::find(head.headers, &rules.sticky.cookie, &rules.beta.cookie);

    let mut minted = None;
    let (key, key_reason): (&[u8], Reason) = match found.user.filter(|k| cookies::is_valid_key(k)) {
        Some(key) => (key, Reason::Returning),
        None => match user_header(rules, head.headers) {
            Some(key) => (key.as_bytes(), Reason::Header),
            None => {
                let id = match rules.sticky.new_key {
                    NewKey::Random => fresh_id(),
                    NewKey::ClientIp => client_ip_id(head.client_ip),
                };
                (minted.insert(MintedKey::new(id)).as_str().as_bytes(), Reason::New)
            }
        },
    };
    let bucket = hash::bucket(&route.name, key);

    let beta =
        found.beta.map(|v| std::str::from_utf8(v).map_or(BetaCookie::Rejected, |v| rules.beta.read(v, head.now)));
    let (assigned, reason) = if route.halted {
        (Version::Stable, Reason::Halted)
    } else if route.canary.is_none() {
        (Version::Stable, key_reason)
    } else {
        match beta {
            Some(BetaCookie::Valid(BetaChoice::Always)) => (Version::Canary, Reason::Beta),
            Some(BetaCookie::Valid(BetaChoice::Never)) => (Version::Stable, Reason::Beta),
            _ if bucket < route.weight.basis_points() => (Version::Canary, key_reason),
            _ => (Version::Stable, key_reason),
        }
    };

    let up = |v: Version| route.pool(v).filter(|&p| rules.pool_up.get(p).copied().unwrap_or(false));
    let (version, pool, reason) = match (up(assigned), up(assigned.other())) {
        (Some(pool), _) => (assigned, pool, reason),
        (None, Some(pool)) => (assigned.other(), pool, Reason::Fallback),
        (None, None) => return Outcome::Unavailable { route: route_index, assigned, reason, new_key: minted },
    };
    Outcome::Routed(Decision {
        route: route_index,
        assigned,
        version,
        pool,
        reason,
        bucket,
        new_key: minted,
        beta_rejected: beta == Some(BetaCookie::Rejected),
    })
}

fn user_header<'h>(rules: &Rules, headers: &'h HeaderMap) -> Option<&'h str> {
    let name = rules.sticky.header.as_ref()?;
    let value = headers.get(name)?.to_str().ok()?.trim();
    cookies::is_valid_key(value.as_bytes()).then_some(value)
}

/// The key of a first-time client in `client_ip` mode: SipHash-2-4 (zero key)
/// of the address in canonical text form (IPv4-mapped IPv6 as IPv4), so every
/// replica mints the same key for the same address.
pub fn client_ip_id(ip: IpAddr) -> u64 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let mut buf = [0u8; 48];
    let text = {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{ip}");
        cursor.position() as usize
    };
    hash::siphash24(0, 0, &buf[..text])
}

#[cfg(test)]
pub(crate) mod tests;
