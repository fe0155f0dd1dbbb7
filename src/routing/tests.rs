//! The guarantees of DESIGN §1, on the pure decision.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue, header::COOKIE};
use proptest::prelude::*;

use super::*;
use crate::config;

/// Three routes over two pools; also the config of unit tests elsewhere.
pub(crate) const CONFIG: &str = r#"
[[routes]]
name = "web"
stable = "v1"
canary = "v2"
weight = 5

[[routes]]
name = "api"
path_prefix = "/api/"
stable = "v1"
canary = "v2"
weight = 50

[[routes]]
name = "static"
path_prefix = "/static/"
stable = "v1"

[pools.v1]
backends = ["127.0.0.1:1"]
[pools.v2]
backends = ["127.0.0.1:2"]
"#;

fn rules_with(text: &str, weights: &[(&str, f64, bool)]) -> Rules {
    let config = config::parse(text, "test.toml", std::path::Path::new(".")).expect("valid config");
    let pools: Vec<&str> = config.pools.keys().map(String::as_str).collect();
    Rules::new(&config, &pools, |name| {
        weights
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, w, halted)| (Weight::from_percent(w).unwrap(), halted))
            .unwrap_or((config.route(name).unwrap().weight, false))
    })
}

fn rules(weight: f64) -> Rules {
    rules_with(CONFIG, &[("web", weight, false)])
}

fn cookie_headers(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if !cookie.is_empty() {
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
    }
    h
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn decide_path(rules: &Rules, path: &str, headers: &HeaderMap) -> Outcome {
    let head = Head { host: Some("example.com"), path, headers, client_ip: IP, now: 1_000 };
    decide(rules, &head, || 0x1234)
}

fn routed(outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Routed(d) => d,
        other => panic!("expected a routed request, got {other:?}"),
    }
}

fn version_of(rules: &Rules, key: &str) -> Version {
    routed(decide_path(rules, "/", &cookie_headers(&format!("cutover_id={key}")))).version
}

#[test]
fn first_time_client_gets_a_minted_key_and_a_returning_one_keeps_it() {
    let rules = rules(5.0);
    let first = routed(decide_path(&rules, "/", &HeaderMap::new()));
    assert_eq!(first.reason, Reason::New);
    let key = first.new_key.expect("a minted key");
    assert_eq!(key.as_str(), "0000000000001234");
    let back = routed(decide_path(&rules, "/", &cookie_headers(&format!("cutover_id={}", key.as_str()))));
    assert_eq!(back.reason, Reason::Returning);
    assert_eq!(back.new_key, None);
    assert_eq!((back.bucket, back.version), (first.bucket, first.version));
}

#[test]
fn bucket_decides_the_version_exactly_at_the_weight_boundary() {
    // bucket("web", "00000000deadbeef") is 1137 (golden vector).
    let key = "00000000deadbeef";
    assert_eq!(version_of(&rules(11.37), key), Version::Stable);
    assert_eq!(version_of(&rules(11.38), key), Version::Canary);
}

#[test]
fn zero_and_full_weight_send_everyone_one_way() {
    for i in 0..500u64 {
        let key = format!("{i:016x}");
        assert_eq!(version_of(&rules(0.0), &key), Version::Stable);
        assert_eq!(version_of(&rules(100.0), &key), Version::Canary);
    }
}

#[test]
fn beta_always_reaches_the_canary_at_weight_zero_and_never_opts_out() {
    let rules = rules(0.0);
    let d = routed(decide_path(&rules, "/", &cookie_headers("cutover_id=abc; cutover_beta=always")));
    assert_eq!((d.version, d.reason), (Version::Canary, Reason::Beta));
    let full = super::tests::rules(100.0);
    let d = routed(decide_path(&full, "/", &cookie_headers("cutover_id=abc; cutover_beta=never")));
    assert_eq!((d.version, d.reason), (Version::Stable, Reason::Beta));
}

#[test]
fn unknown_beta_value_is_a_plain_user() {
    let d = routed(decide_path(&rules(0.0), "/", &cookie_headers("cutover_id=abc; cutover_beta=yes")));
    assert_eq!((d.version, d.reason, d.beta_rejected), (Version::Stable, Reason::Returning, true));
}

#[test]
fn halted_route_sends_beta_testers_to_stable_too() {
    let rules = rules_with(CONFIG, &[("web", 100.0, true)]);
    let d = routed(decide_path(&rules, "/", &cookie_headers("cutover_id=abc; cutover_beta=always")));
    assert_eq!((d.version, d.reason), (Version::Stable, Reason::Halted));
}

#[test]
fn route_without_canary_serves_stable_even_for_beta_testers() {
    let d = routed(decide_path(&rules(100.0), "/static/app.js", &cookie_headers("cutover_beta=always")));
    assert_eq!((d.version, d.reason), (Version::Stable, Reason::New));
}

#[test]
fn fallback_serves_the_other_pool_without_changing_the_assignment() {
    let mut rules = rules(100.0);
    let canary = rules.routes[0].canary.unwrap();
    rules.pool_up[canary] = false;
    let d = routed(decide_path(&rules, "/", &cookie_headers("cutover_id=abc")));
    assert_eq!((d.assigned, d.version, d.reason), (Version::Canary, Version::Stable, Reason::Fallback));
    assert_eq!(d.pool, rules.routes[0].stable);
    assert_eq!(d.new_key, None, "the user's cookie is not rewritten");
}

#[test]
fn both_pools_down_is_unavailable() {
    let mut rules = rules(0.0);
    rules.pool_up.iter_mut().for_each(|up| *up = false);
    let Outcome::Unavailable { route: 0, assigned: Version::Stable, reason: Reason::New, new_key: Some(_) } =
        decide_path(&rules, "/", &HeaderMap::new())
    else {
        panic!("expected Unavailable for a new user on stable");
    };
}

#[test]
fn no_route_for_an_unknown_host() {
    let text = CONFIG
        .replacen("name = \"web\"", "name = \"web\"\nhost = \"example.org\"", 1)
        .replace("path_prefix = \"/api/\"", "path_prefix = \"/api/\"\nhost = \"example.org\"")
        .replace("path_prefix = \"/static/\"", "path_prefix = \"/static/\"\nhost = \"example.org\"");
    let rules = rules_with(&text, &[]);
    assert_eq!(decide_path(&rules, "/", &HeaderMap::new()), Outcome::NoRoute);
}

#[test]
fn user_header_keys_api_clients_without_a_cookie() {
    let text = format!("[sticky]\nheader = \"X-User-Id\"\n{CONFIG}");
    let rules = rules_with(&text, &[]);
    let mut h = HeaderMap::new();
    h.insert("x-user-id", HeaderValue::from_static("alice"));
    let d = routed(decide_path(&rules, "/", &h));
    assert_eq!((d.reason, d.new_key, d.bucket), (Reason::Header, None, 1595));
    // The cookie comes first when both are present.
    h.insert(COOKIE, HeaderValue::from_static("cutover_id=00000000deadbeef"));
    assert_eq!(routed(decide_path(&rules, "/", &h)).bucket, 1137);
}

#[test]
fn client_ip_mode_mints_the_same_key_for_the_same_address() {
    let text = format!("[sticky]\nnew_key = \"client_ip\"\n{CONFIG}");
    let rules = rules_with(&text, &[]);
    let a = routed(decide_path(&rules, "/", &HeaderMap::new()));
    let b = routed(decide_path(&rules, "/", &HeaderMap::new()));
    assert_eq!(a.new_key, b.new_key);
    assert_eq!(a.new_key.unwrap().as_str(), format!("{:016x}", client_ip_id(IP)));
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(client_ip_id(mapped), client_ip_id(IP));
}

#[test]
fn invalid_cookie_key_is_replaced() {
    let d = routed(decide_path(&rules(5.0), "/", &cookie_headers("cutover_id=has space")));
    assert_eq!(d.reason, Reason::New);
    assert!(d.new_key.is_some());
}

proptest! {
    /// Sticky: the same key always gets the same version while w is unchanged.
    #[test]
    fn sticky(key in "[a-z0-9]{1,32}", w in 0u16..=10_000) {
        let rules = rules(f64::from(w) / 100.0);
        let first = version_of(&rules, &key);
        for _ in 0..3 {
            prop_assert_eq!(version_of(&rules, &key), first);
        }
    }

    /// Monotone: raising w from a to b moves exactly the users with
    /// a×100 ≤ bucket < b×100 to the canary and no one back.
    #[test]
    fn monotone(key in "[a-z0-9]{1,32}", a in 0u16..=10_000, b in 0u16..=10_000) {
        let (lo, hi) = (a.min(b), a.max(b));
        let at_lo = version_of(&rules(f64::from(lo) / 100.0), &key);
        let at_hi = version_of(&rules(f64::from(hi) / 100.0), &key);
        let bucket = hash::bucket("web", key.as_bytes());
        prop_assert!(!(at_lo == Version::Canary && at_hi == Version::Stable), "moved back to stable");
        let moved = at_lo == Version::Stable && at_hi == Version::Canary;
        prop_assert_eq!(moved, (lo..hi).contains(&bucket));
    }

    /// Independent routes: the bucket depends on the route name.
    #[test]
    fn bucket_depends_only_on_route_and_key(key in "[a-z0-9]{1,32}") {
        let rules = rules(5.0);
        let headers = cookie_headers(&format!("cutover_id={key}"));
        let web = routed(decide_path(&rules, "/", &headers));
        let api = routed(decide_path(&rules, "/api/x", &headers));
        prop_assert_eq!(web.bucket, hash::bucket("web", key.as_bytes()));
        prop_assert_eq!(api.bucket, hash::bucket("api", key.as_bytes()));
    }
}
