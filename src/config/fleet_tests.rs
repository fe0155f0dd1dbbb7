//! `[fleet]`: parsed and validated; absent, nothing changes.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::routing::tests::CONFIG;

fn with(fleet: &str) -> Result<Config, ConfigError> {
    parse(&format!("{CONFIG}\n{fleet}"), "/etc/cutover/cutover.toml", Path::new("/etc/cutover"))
}

#[test]
fn no_fleet_section_means_single_instance() {
    assert_eq!(with("").unwrap().fleet, None);
}

#[test]
fn fleet_section_with_defaults() {
    let config = with("[fleet]\netcd = [\"http://127.0.0.1:2379/\", \"http://10.0.2.5:2379\"]\n").unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.etcd, vec!["http://127.0.0.1:2379", "http://10.0.2.5:2379"]);
    assert_eq!(fleet.prefix, "/cutover");
    assert_eq!(fleet.lease, Duration::from_secs(5));
    assert!(!fleet.name.is_empty());
    assert_eq!(fleet.password, None);
}

#[test]
fn fleet_settings() {
    let config = with(
        "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/cutover/prod/\"\nname = \"proxy-a\"\nlease = \"2s\"\n",
    )
    .unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(
        (fleet.prefix.as_str(), fleet.name.as_str(), fleet.lease),
        ("/cutover/prod", "proxy-a", Duration::from_secs(2))
    );
}

#[test]
fn fleet_errors_name_the_key_and_line() {
    let lines = CONFIG.lines().count() + 2;
    let cases = [
        ("[fleet]\nprefix = \"/x\"\n", "fleet.etcd", "expected the etcd client URLs"),
        ("[fleet]\netcd = []\n", "fleet.etcd", "at least one"),
        ("[fleet]\netcd = [\"10.0.1.5:2379\"]\n", "fleet.etcd", "expected a URL such as"),
        ("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"cutover\"\n", "fleet.prefix", "key prefix"),
        ("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"a b\"\n", "fleet.name", "expected a name"),
        ("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nlease = \"500ms\"\n", "fleet.lease", "whole seconds"),
        (
            "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\n",
            "fleet.password_file",
            "needs a password_file",
        ),
        ("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\ntls = { ca = \"ca.pem\" }\n", "fleet.tls", "https://"),
        ("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\ncolour = \"red\"\n", "", "colour"),
    ];
    for (text, key, message) in cases {
        let e = with(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(e.line.is_some_and(|l| l >= lines - 1), "{text}: {e}");
    }
}

#[test]
fn the_replica_name_is_not_part_of_the_config_hash() {
    let a = with("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"proxy-a\"\n").unwrap();
    let b = with("[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"proxy-b\"\n").unwrap();
    let other = with("[fleet]\netcd = [\"http://127.0.0.1:2380\"]\nname = \"proxy-a\"\n").unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), other.fingerprint());
    assert_ne!(a.fingerprint(), with("").unwrap().fingerprint());
}
