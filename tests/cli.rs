//! The command line: `cutover check` errors name file, line and key, and say
//! what was expected;
//! `cutover beta mint` prints a value the proxy accepts.

use std::process::Command;

fn cutover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"[server]
listen = ["127.0.0.1:8080"]

[[routes]]
name = "web"
stable = "v1"
canary = "v2"
weight = 5

[pools.v1]
backends = ["10.0.1.10:8080"]

[pools.v2]
backends = ["10.0.2.10:8080"]
"#;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = cutover(&["check", "-c", path.to_str().unwrap()]);
    (code, out, err.replace(path.to_str().unwrap(), "cutover.toml"))
}

#[test]
fn check_accepts_a_valid_config() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok (1 routes, 2 pools, hash "), "{out}");
}

#[test]
fn check_errors_name_the_line_and_the_key() {
    let cases = [
        // (edit, expected line, expected words)
        (GOOD.replace("listen =", "lisen ="), 2, vec!["unknown field `lisen`", "expected one of"]),
        (GOOD.replace("weight = 5", "weight = 150"), 8, vec!["routes[0].weight", "from 0 to 100", "150"]),
        (GOOD.replace("canary = \"v2\"", "canary = \"v3\""), 7, vec!["routes[0].canary", "no pool named \"v3\""]),
        (GOOD.replace("[server]", "[timeouts]\nconnect = \"soon\"\n[server]"), 2, vec!["timeouts.connect", "duration"]),
        (GOOD.replace("\"10.0.1.10:8080\"", "\"10.0.1.10\""), 11, vec!["pools.v1.backends", "host:port"]),
        (GOOD.replace("weight = 5", "weight = 5\nhost = \"*.*\""), 9, vec!["routes[0].host"]),
        (GOOD.replace("[pools.v1]", "[pools.v1]\nbalance = \"random\""), 11, vec!["pools.v1.balance", "round_robin"]),
        (GOOD.replace("listen = [\"127.0.0.1:8080\"]", "listen = [\"localhost\"]"), 2, vec!["server.listen"]),
        (
            format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9901\"\n"),
            17,
            vec!["admin.token_file", "requires token_file"],
        ),
        (
            GOOD.replace("[[routes]]", "[sticky]\nnew_key = \"cookie\"\n[[routes]]"),
            5,
            vec!["sticky.new_key", "client_ip"],
        ),
    ];
    for (text, line, words) in cases {
        let (code, _, err) = check(&text);
        assert_eq!(code, 1, "expected a failure for:\n{text}");
        assert!(err.starts_with(&format!("cutover.toml:{line}:")), "expected line {line}, got: {err}");
        for w in words {
            assert!(err.contains(w), "expected {w:?} in: {err}");
        }
    }
}

#[test]
fn check_says_what_a_key_expects_when_its_value_has_the_wrong_type() {
    let cases = [
        (
            GOOD.replace("weight = 5", "weight = \"lots\""),
            "cutover.toml:8: routes[0].weight: expected a number 0..100, found the string \"lots\"",
        ),
        (
            GOOD.replace("[server]", "[server]\ndrain_timeout = 30"),
            "cutover.toml:2: server.drain_timeout: expected a duration such as \"2s\", \"500ms\" or \"30d\", \
             found the number 30",
        ),
        (
            GOOD.replace("[\"127.0.0.1:8080\"]", "\"127.0.0.1:8080\""),
            "cutover.toml:2: server.listen: expected an array of addresses such as [\"0.0.0.0:8080\"], \
             found the string \"127.0.0.1:8080\"",
        ),
    ];
    for (text, expected) in cases {
        let (code, _, err) = check(&text);
        assert_eq!((code, err.trim_end()), (1, expected));
    }
}

#[test]
fn check_of_a_missing_file_says_so() {
    let (code, _, err) = cutover(&["check", "-c", "/nonexistent/cutover.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn beta_mint_prints_a_value_the_proxy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("beta.key");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let (code, out, err) =
        cutover(&["beta", "mint", "--secret-file", secret.to_str().unwrap(), "always", "--ttl", "1h"]);
    assert_eq!(code, 0, "{err}");
    let value = out.trim();
    let rules = cutover::routing::beta::BetaRules::new("cutover_beta", Some(b"0123456789abcdef0123456789abcdef"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        rules.read(value, now),
        cutover::routing::beta::BetaCookie::Valid(cutover::routing::beta::BetaChoice::Always)
    );
    assert_eq!(rules.read(value, now + 3601), cutover::routing::beta::BetaCookie::Rejected, "expires after the ttl");
    let (code, _, err) = cutover(&["beta", "mint", "--secret-file", secret.to_str().unwrap(), "sometimes"]);
    assert_eq!(code, 1);
    assert!(err.contains("always"), "{err}");
}
