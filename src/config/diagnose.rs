//! A TOML error in the config's own words: which key (its full path, such as
//! `routes[0].weight`), what it expects and what the file holds instead.
//!
//! The deserializer reports a value of the wrong type as "invalid type: string
//! \"lots\", expected a number 0..100" with the value's place in the text but
//! not its key; the key is found by looking the place up in the document.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The key and the message for a TOML error in `text`.
pub fn describe(text: &str, e: &toml::de::Error) -> (String, String) {
    let message = e.message().trim();
    let place = e.span().and_then(|span| key_path(text, span));
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let found = place.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| found_in_words(found));
        let key = place.map(|p| p.key).unwrap_or_default();
        return (key, format!("expected {}, found {found}", expected_in_words(expected)));
    }
    if let Some(field) = message.strip_prefix("missing field ") {
        let table = place.map(|p| p.key).unwrap_or_default();
        return (table, format!("missing key {field}, which has no default"));
    }
    // Anything else (syntax, unknown or duplicate keys): the span covers the
    // key or the place, and the message names what is wrong.
    let key = e
        .span()
        .and_then(|s| text.get(s))
        .filter(|k| !k.contains('\n') && k.len() < 80)
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let key = if message.contains(&format!("`{key}`")) { String::new() } else { key };
    (key, message.to_string())
}

/// Where a span of the text lies in the document.
struct Place {
    /// `routes[0].weight`
    key: String,
    /// The value there, in words (`the string "lots"`), when it is a value.
    value: Option<String>,
}

fn key_path(text: &str, span: Range<usize>) -> Option<Place> {
    let root = DeTable::parse(text).ok()?;
    let mut best: Option<(Range<usize>, String, &Spanned<DeValue<'_>>)> = None;
    for (key, value) in root.get_ref() {
        visit(key.get_ref(), value, &span, &mut best);
    }
    best.map(|(_, key, value)| Place { key, value: (value.span() == span).then(|| value_in_words(value.get_ref())) })
}

/// Keeps in `best` the value whose span is the smallest that holds `target`
/// (tables of `[[arrays]]` span only their header, so every value is visited).
fn visit<'a, 'i>(
    path: &str,
    value: &'a Spanned<DeValue<'i>>,
    target: &Range<usize>,
    best: &mut Option<(Range<usize>, String, &'a Spanned<DeValue<'i>>)>,
) {
    let span = value.span();
    if span.start <= target.start
        && target.end <= span.end
        && best.as_ref().is_none_or(|(b, _, _)| span.end - span.start <= b.end - b.start)
    {
        *best = Some((span, path.to_string(), value));
    }
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, value) in table {
                visit(&format!("{path}.{}", key.get_ref()), value, target, best);
            }
        }
        DeValue::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                visit(&format!("{path}[{i}]"), value, target, best);
            }
        }
        _ => {}
    }
}

fn value_in_words(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the date-time {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// serde's `Unexpected` (`string "x"`, ``integer `3` ``, `map`) in words, for
/// when the value was not found in the document.
fn found_in_words(found: &str) -> String {
    let bare = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = found.strip_prefix("integer ").or_else(|| found.strip_prefix("floating point ")) {
        format!("the number {}", bare(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        format!("the boolean {}", bare(b))
    } else if found == "sequence" {
        "an array".to_string()
    } else if found == "map" {
        "a table".to_string()
    } else {
        found.to_string()
    }
}

/// serde's expectations for Rust types (`i64`, `a sequence`, `struct Health`)
/// in the words of a TOML file. Kinds with a meaning say their own words.
fn expected_in_words(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        _ if expected.starts_with("struct ") => "a table".into(),
        _ => expected.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    fn error_of(text: &str) -> String {
        match super::super::parse(text, "cutover.toml", Path::new("/")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// (what replaces `[server]` or another line of GOOD, the exact error)
    fn check(cases: &[(&str, &str, &str)]) {
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            assert_eq!(error_of(&text), *expected, "for:\n{text}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_what_was_expected_and_what_was_found() {
        check(&[
            (
                "weight = 5",
                "weight = \"lots\"",
                "cutover.toml:8: routes[0].weight: expected a number 0..100, found the string \"lots\"",
            ),
            (
                "weight = 5",
                "weight = true",
                "cutover.toml:8: routes[0].weight: expected a number 0..100, found the boolean true",
            ),
            ("name = \"web\"", "name = 5", "cutover.toml:5: routes[0].name: expected a string, found the number 5"),
            (
                "[server]",
                "[server]\nworkers = \"4\"",
                "cutover.toml:2: server.workers: expected a whole number, found the string \"4\"",
            ),
            (
                "[server]",
                "[retries]\nbudget_ratio = \"x\"\n[server]",
                "cutover.toml:2: retries.budget_ratio: expected a number, found the string \"x\"",
            ),
            ("[[routes]]", "[routes]", "cutover.toml:4: routes: expected an array, found a table"),
        ]);
    }

    #[test]
    fn durations_of_the_wrong_type_say_what_a_duration_looks_like() {
        check(&[
            (
                "[server]",
                "[server]\ndrain_timeout = 30",
                "cutover.toml:2: server.drain_timeout: expected a duration such as \"2s\", \"500ms\" or \"30d\", \
                 found the number 30",
            ),
            (
                "[server]",
                "[timeouts]\nconnect = 1979-05-27\n[server]",
                "cutover.toml:2: timeouts.connect: expected a duration such as \"2s\", \"500ms\" or \"30d\", \
                 found the date-time 1979-05-27",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\nhealth = { interval = 2.5 }",
                "cutover.toml:12: pools.v1.health.interval: expected a duration such as \"2s\", \"500ms\" or \
                 \"30d\", found the number 2.5",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\neject = { base = 5 }",
                "cutover.toml:12: pools.v1.eject.base: expected a duration such as \"2s\", \"500ms\" or \"30d\", \
                 found the number 5",
            ),
        ]);
    }

    #[test]
    fn addresses_and_listen_specs_of_the_wrong_type_say_what_is_expected() {
        check(&[
            (
                "listen = [\"127.0.0.1:8080\"]",
                "listen = \"127.0.0.1:8080\"",
                "cutover.toml:2: server.listen: expected an array of addresses such as [\"0.0.0.0:8080\"], \
                 found the string \"127.0.0.1:8080\"",
            ),
            (
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [8080]",
                "cutover.toml:2: server.listen[0]: expected an address such as \"0.0.0.0:8080\" or \
                 \"[::1]:8080\", found the number 8080",
            ),
            (
                "[server]",
                "[metrics]\nlisten = 9464\n[server]",
                "cutover.toml:2: metrics.listen: expected an address such as \"0.0.0.0:8080\" or \"[::1]:8080\", \
                 found the number 9464",
            ),
            (
                "[server]",
                "[admin]\nlisten = 9901\n[server]",
                "cutover.toml:2: admin.listen: expected \"unix:/path/to/admin.sock\" or an address such as \
                 \"127.0.0.1:9901\", found the number 9901",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = \"10.0.1.10:8080\"",
                "cutover.toml:11: pools.v1.backends: expected an array of \"host:port\" strings such as \
                 [\"10.0.1.10:8080\"], found the string \"10.0.1.10:8080\"",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\", 7]",
                "cutover.toml:11: pools.v1.backends[1]: expected \"host:port\" such as \"10.0.1.10:8080\", \
                 found the number 7",
            ),
        ]);
    }

    #[test]
    fn choices_paths_and_tables_of_the_wrong_type_say_what_is_expected() {
        check(&[
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\nbalance = 1",
                "cutover.toml:12: pools.v1.balance: expected \"round_robin\" or \"least_requests\", \
                 found the number 1",
            ),
            (
                "[server]",
                "[sticky]\nnew_key = true\n[server]",
                "cutover.toml:2: sticky.new_key: expected \"random\" or \"client_ip\", found the boolean true",
            ),
            (
                "[server]",
                "[log]\naccess = false\n[server]",
                "cutover.toml:2: log.access: expected \"json\" or \"off\", found the boolean false",
            ),
            (
                "[server]",
                "[sticky]\nheader = [\"X-User\"]\n[server]",
                "cutover.toml:2: sticky.header: expected a header name such as \"X-User-Id\", found an array",
            ),
            (
                "[server]",
                "[state]\npath = 3\n[server]",
                "cutover.toml:2: state.path: expected a file path, found the number 3",
            ),
        ]);
        check(&[
            (
                "name = \"web\"",
                "name = \"web\"\nhost = 80",
                "cutover.toml:6: routes[0].host: expected a host such as \"example.com\", \"*.example.com\" or \
                 \"*\", found the number 80",
            ),
            (
                "name = \"web\"",
                "name = \"web\"\npath_prefix = [\"/a\"]",
                "cutover.toml:6: routes[0].path_prefix: expected a path starting with \"/\", found an array",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\nhealth = \"yes\"",
                "cutover.toml:12: pools.v1.health: expected a table, found the string \"yes\"",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\ntls = { ca = \"ca.pem\", sni = false }",
                "cutover.toml:12: pools.v1.tls.sni: expected a string, found the boolean false",
            ),
            (
                "[server]",
                "[server]\ntls = { listen = [\"127.0.0.1:0\"], certs = [{ cert = 1, key = \"k\" }] }",
                "cutover.toml:2: server.tls.certs[0].cert: expected a file path, found the number 1",
            ),
            (
                "[server]",
                "[beta]\ncookie = 1\n[server]",
                "cutover.toml:2: beta.cookie: expected a cookie name, found the number 1",
            ),
            (
                "backends = [\"10.0.1.10:8080\"]",
                "backends = [\"10.0.1.10:8080\"]\neject = { timeouts = \"yes\" }",
                "cutover.toml:12: pools.v1.eject.timeouts: expected true or false, found the string \"yes\"",
            ),
        ]);
    }

    #[test]
    fn a_missing_key_names_its_table() {
        check(&[("stable = \"v1\"\n", "", "cutover.toml:4: routes[0]: missing key `stable`, which has no default")]);
    }
}
