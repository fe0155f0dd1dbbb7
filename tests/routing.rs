//! The routing guarantees of DESIGN §1, black-box: the real server on real
//! sockets with in-process backends, users as cookies.

mod common;

use std::collections::HashMap;

use common::*;
use cutover::routing::hash::bucket;

/// Sends `n` first-time requests on one keep-alive connection and returns
/// (key, version) for each minted key.
async fn fresh_users(proxy: &Proxy, n: usize) -> Vec<(String, String)> {
    let mut client = Client::connect(proxy.addr()).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let got = client.get("/", &[]).await;
        let key = got.set_cookie("cutover_id").expect("a first-time client gets a cutover_id cookie");
        out.push((key, got.first_line().to_string()));
    }
    out
}

/// The version each returning user (by key) is served.
async fn versions(proxy: &Proxy, keys: &[String]) -> Vec<String> {
    let mut client = Client::connect(proxy.addr()).await;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let got = client.get("/", &[("cookie", &format!("cutover_id={key}"))]).await;
        assert!(got.set_cookie("cutover_id").is_none(), "a returning user's cookie is not rewritten");
        out.push(got.first_line().to_string());
    }
    out
}

fn keys(n: usize, seed: u64) -> Vec<String> {
    (0..n as u64).map(|i| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed)).collect()
}

/// Within 3 standard deviations of a binomial(n, p).
fn within_3_sigma(count: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= 3.0 * sigma
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_same_key_same_version_for_1000_users() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 30.0, ""));
    let users = keys(1000, 1);
    let first = versions(&proxy, &users).await;
    for _ in 0..2 {
        assert_eq!(versions(&proxy, &users).await, first);
    }
    // And the version is exactly what the documented bucket says.
    for (key, version) in users.iter().zip(&first) {
        let expect = if bucket("web", key.as_bytes()) < 3000 { "canary" } else { "stable" };
        assert_eq!(version, expect, "key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monotone_raising_5_to_25_moves_exactly_the_new_share_and_no_one_back() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let users: Vec<String> = fresh_users(&proxy, 2000).await.into_iter().map(|(k, _)| k).collect();
    let at5 = versions(&proxy, &users).await;
    proxy.set_weight("web", 25.0).await;
    let at25 = versions(&proxy, &users).await;
    let mut moved = 0;
    for ((key, before), after) in users.iter().zip(&at5).zip(&at25) {
        let b = bucket("web", key.as_bytes());
        if before == "canary" {
            assert_eq!(after, "canary", "user {key} (bucket {b}) moved back to stable");
        }
        let should_move = (500..2500).contains(&b);
        assert_eq!(before == "stable" && after == "canary", should_move, "user {key} bucket {b}");
        moved += usize::from(should_move);
    }
    let canary_at25 = at25.iter().filter(|v| *v == "canary").count();
    assert!(within_3_sigma(canary_at25, users.len(), 0.25), "{canary_at25} of {} on canary at 25%", users.len());
    assert!(within_3_sigma(moved, users.len(), 0.20), "{moved} moved");
    // Lowering moves exactly those back.
    proxy.set_weight("web", 5.0).await;
    assert_eq!(versions(&proxy, &users).await, at5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_zero_returns_everyone_at_once() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 50.0, ""));
    let users = keys(500, 2);
    let before = versions(&proxy, &users).await;
    assert!(before.iter().any(|v| v == "canary"));
    let (status, _) = proxy.admin_call(http::Method::POST, "/v1/routes/web/rollback", None).await;
    assert_eq!(status, 200);
    assert!(versions(&proxy, &users).await.iter().all(|v| v == "stable"));
    // Beta testers go to stable too while halted.
    let got = get(proxy.addr(), "/", &[("cookie", "cutover_id=abc; cutover_beta=always")]).await;
    assert_eq!(got.first_line(), "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_consistent_two_proxies_give_1000_users_identical_answers() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 37.5, "");
    let (a, b) = (Proxy::start(&config), Proxy::start(&config));
    let users = keys(1000, 3);
    let (from_a, from_b) = (versions(&a, &users).await, versions(&b, &users).await);
    assert_eq!(from_a, from_b);
    let canary_share = from_a.iter().filter(|v| *v == "canary").count();
    assert!(within_3_sigma(canary_share, 1000, 0.375), "{canary_share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_independent_assignments_on_two_routes_are_uncorrelated() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let extra = r#"
[[routes]]
name = "api"
path_prefix = "/api/"
stable = "stable"
canary = "canary"
weight = 50
"#;
    let proxy = Proxy::start(
        &two_pool_config(stable.addr, canary.addr, 50.0, "").replace("[[routes]]", &format!("{extra}\n[[routes]]")),
    );
    let users = keys(2000, 4);
    let web = versions(&proxy, &users).await;
    let mut client = Client::connect(proxy.addr()).await;
    let mut both = 0;
    for (key, w) in users.iter().zip(&web) {
        let api = client.get("/api/x", &[("cookie", &format!("cutover_id={key}"))]).await;
        if api.first_line() == "canary" && w == "canary" {
            both += 1;
        }
    }
    // Independent at 50%/50%: a quarter of users are canary on both.
    assert!(within_3_sigma(both, users.len(), 0.25), "{both} of {} canary on both routes", users.len());
}

/// SplitMix64: a fixed pseudo-random sequence, so the sample is the same on
/// every run (the proxy mints keys from the OS's randomness, which a test
/// cannot repeat).
fn splitmix_keys(n: usize, mut state: u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accurate_10k_users_within_3_sigma_of_the_weight() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    for w in [1.0, 5.0, 50.0] {
        let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, w, ""));
        let users = splitmix_keys(10_000, w as u64);
        let on_canary = versions(&proxy, &users).await.iter().filter(|v| *v == "canary").count();
        assert!(within_3_sigma(on_canary, users.len(), w / 100.0), "weight {w}%: {on_canary} of 10000 on canary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_users_get_the_version_their_minted_key_says() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 20.0, ""));
    let users = fresh_users(&proxy, 5000).await;
    let distinct: std::collections::HashSet<&String> = users.iter().map(|(k, _)| k).collect();
    assert_eq!(distinct.len(), users.len(), "every first-time client gets its own key");
    for (key, version) in &users {
        let expect = if bucket("web", key.as_bytes()) < 2000 { "canary" } else { "stable" };
        assert_eq!(version, expect, "key {key}");
    }
    let text = proxy.metrics();
    let new = metric(&text, r#"cutover_assignments_total{reason="new",route="web",version="canary"}"#)
        + metric(&text, r#"cutover_assignments_total{reason="new",route="web",version="stable"}"#);
    assert_eq!(new, 5000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_attributes() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 5.0, "[sticky]\nmax_age = \"7d\""));
    let got = get(proxy.addr(), "/", &[]).await;
    let cookie = got.headers.get("set-cookie").unwrap().to_str().unwrap().to_string();
    let key = got.set_cookie("cutover_id").unwrap();
    assert_eq!(key.len(), 16);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(cookie, format!("cutover_id={key}; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beta_always_and_never_and_dark_launch_at_zero() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, ""));
    let users = keys(200, 5);
    assert!(versions(&proxy, &users).await.iter().all(|v| v == "stable"), "weight 0: everyone on stable");
    let mut client = Client::connect(proxy.addr()).await;
    for key in &users {
        let got = client.get("/", &[("cookie", &format!("cutover_id={key}; cutover_beta=always"))]).await;
        assert_eq!(got.first_line(), "canary", "dark launch: beta testers see the canary at 0%");
    }
    proxy.set_weight("web", 100.0).await;
    for key in &users {
        let got = client.get("/", &[("cookie", &format!("cutover_beta=never; cutover_id={key}"))]).await;
        assert_eq!(got.first_line(), "stable", "cutover_beta=never opts out even at 100%");
    }
    let text = proxy.metrics();
    assert_eq!(metric(&text, r#"cutover_assignments_total{reason="beta",route="web",version="canary"}"#), 200.0);
    assert_eq!(metric(&text, r#"cutover_assignments_total{reason="beta",route="web",version="stable"}"#), 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_beta_cookies_only_count_when_valid() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let secret = b"this is a beta secret of 32 byte";
    std::fs::write(dir.path().join("beta.key"), secret).unwrap();
    let config = two_pool_config(stable.addr, canary.addr, 0.0, "[beta]\nsecret_file = \"beta.key\"");
    let proxy = Proxy::start_in(dir, &config);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let valid = cutover::routing::beta::mint(secret, cutover::routing::beta::BetaChoice::Always, now + 3600);
    let expired = cutover::routing::beta::mint(secret, cutover::routing::beta::BetaChoice::Always, now - 1);
    let forged = cutover::routing::beta::mint(
        b"somebody else's secret, 32 bytes",
        cutover::routing::beta::BetaChoice::Always,
        now + 3600,
    );
    let tampered = valid.replacen(&(now + 3600).to_string(), &(now + 99_999).to_string(), 1);
    let ask = |value: String| {
        let addr = proxy.addr();
        async move {
            get(addr, "/", &[("cookie", &format!("cutover_id=u1; cutover_beta={value}"))])
                .await
                .first_line()
                .to_string()
        }
    };
    assert_eq!(ask(valid).await, "canary");
    for bad in [expired, forged, tampered, "always".to_string()] {
        assert_eq!(ask(bad.clone()).await, "stable", "{bad} must be ignored");
    }
    let text = proxy.metrics();
    assert_eq!(metric(&text, "cutover_beta_cookie_rejected_total"), 4.0);
    assert_eq!(metric(&text, r#"cutover_assignments_total{reason="returning",route="web",version="stable"}"#), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beta_enroll_path_sets_and_clears_the_cookie_and_redirects_back() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy =
        Proxy::start(&two_pool_config(stable.addr, canary.addr, 0.0, "[beta]\nenroll_path = \"/.cutover/beta\""));
    let joined = get(proxy.addr(), "/.cutover/beta?join&return=%2Fshop%2Fcart", &[]).await;
    assert_eq!(joined.status, 303);
    assert_eq!(joined.headers.get("location").unwrap(), "/shop/cart");
    let value = joined.set_cookie("cutover_beta").unwrap();
    assert_eq!(value, "always");
    let served = get(proxy.addr(), "/", &[("cookie", &format!("cutover_beta={value}"))]).await;
    assert_eq!(served.first_line(), "canary");
    let left = get(proxy.addr(), "/.cutover/beta?leave&return=//evil.example", &[]).await;
    assert_eq!(left.status, 303);
    assert_eq!(left.headers.get("location").unwrap(), "/", "no open redirect");
    assert!(left.headers.get("set-cookie").unwrap().to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(get(proxy.addr(), "/.cutover/beta", &[]).await.status, 400);
    assert_eq!(stable.hits() + canary.hits(), 1, "the enroll path never reaches a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_header_keys_api_clients() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 50.0, "[sticky]\nheader = \"X-User-Id\""));
    let mut client = Client::connect(proxy.addr()).await;
    let mut seen = HashMap::new();
    for i in 0..300 {
        let user = format!("user-{i}");
        let got = client.get("/", &[("x-user-id", &user)]).await;
        assert!(got.set_cookie("cutover_id").is_none(), "header-keyed clients get no cookie");
        let expect = if bucket("web", user.as_bytes()) < 5000 { "canary" } else { "stable" };
        assert_eq!(got.first_line(), expect);
        seen.insert(user, got.first_line().to_string());
    }
    for (user, version) in &seen {
        assert_eq!(client.get("/", &[("x-user-id", user)]).await.first_line(), version);
    }
    let text = proxy.metrics();
    let header_total = metric(&text, r#"cutover_assignments_total{reason="header",route="web",version="canary"}"#)
        + metric(&text, r#"cutover_assignments_total{reason="header",route="web",version="stable"}"#);
    assert_eq!(header_total, 600.0);
}

/// A user header on a field HTTP/1.1 heads keep as it came (`Authorization`
/// is forwarded as whole lines, not through the header map): the key is
/// found all the same, and the field still reaches the backend once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_header_on_a_field_kept_as_it_came_keys_clients_too() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 50.0, "[sticky]\nheader = \"Authorization\""));
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..40 {
        let user = format!("user-{i}");
        let got = client.get("/", &[("authorization", &user), ("user-agent", "test/1")]).await;
        assert!(got.set_cookie("cutover_id").is_none(), "header-keyed clients get no cookie");
        let expect = if bucket("web", user.as_bytes()) < 5000 { "canary" } else { "stable" };
        assert_eq!(got.first_line(), expect, "{user}");
        let seen = if expect == "canary" { canary.last_seen() } else { stable.last_seen() };
        let values: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(values, [user.as_str()], "forwarded once, as sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_mode_gives_a_stable_key_per_address() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let proxy = Proxy::start(&two_pool_config(stable.addr, canary.addr, 50.0, "[sticky]\nnew_key = \"client_ip\""));
    let expected = format!("{:016x}", cutover::routing::client_ip_id("127.0.0.1".parse().unwrap()));
    for _ in 0..5 {
        let got = get(proxy.addr(), "/", &[]).await;
        assert_eq!(got.set_cookie("cutover_id").as_deref(), Some(expected.as_str()));
        let version = if bucket("web", expected.as_bytes()) < 5000 { "canary" } else { "stable" };
        assert_eq!(got.first_line(), version);
    }
}
