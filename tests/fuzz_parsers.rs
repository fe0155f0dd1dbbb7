//! Property tests over the code that parses untrusted bytes: the request-head
//! parser, the head the proxy writes for a backend, the chunk decoder, the
//! response-head parser, the cookie splitter and the beta-cookie verifier.
//! Inputs are arbitrary bytes and heads built from HTTP's own pieces, then
//! mutated; every property holds for all of them: no panic, bounded output,
//! and round trips that give back what went in.
//!
//! Deterministic in CI: a fixed seed and a case count sized for a few
//! seconds. A longer local run, with another seed:
//! `PROPTEST_CASES=100000 PROPTEST_RNG_SEED=7 cargo test --test fuzz_parsers`

use cutover::proxy::h1::fuzz::{self, Parsed};
use cutover::routing::beta::{BetaChoice, BetaCookie, BetaRules};
use cutover::routing::cookies;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// The largest request head the server accepts (64 KiB) and field count (100).
const MAX_HEAD: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x5ec_u64), failure_persistence: None, ..Config::default() }
}

// ------------------------------------------------------------ generators

/// A request head from HTTP's pieces (methods, targets, versions, the
/// fields that decide framing, hosts and upgrades, with odd values), or
/// plain noise.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method =
        prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "PATCH", "G\u{e9}T", ""]);
    let target = prop_oneof![
        Just("/".to_string()),
        "/[a-z0-9/._~%?=&;-]{0,24}",
        "http://[a-z.]{1,12}(:[0-9]{1,5})?/[a-z?=]{0,8}",
        "https?://[a-z:@.]{0,16}/",
        Just("*".to_string()),
        "[a-z.]{1,10}:[0-9]{1,4}",
    ];
    let version = prop::sample::select(vec![
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.2",
        "HTTP/1.9",
        "HTTP/2.0",
        "HTTP/1.10",
        "HTTP/1",
        "http/1.1",
    ]);
    let name = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "TE",
        "Cookie",
        "X-Forwarded-For",
        "Via",
        "X-Cutover-Version",
        "HTTP2-Settings",
        "Keep-Alive",
        "X-App",
        "User-Agent",
        "accept",
        "Referer",
        "Host ",
        "",
    ]);
    let value = prop_oneof![
        "[a-z0-9.:-]{0,16}",
        "0{0,40}[0-9]{1,3}",
        "[0-9a-zA-Z ,;=\t]{0,24}",
        prop::sample::select(vec![
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            "close",
            "keep-alive",
            "upgrade",
            "Upgrade, HTTP2-Settings",
            "websocket",
            "h2c",
            "100-continue",
            "trailers",
            "Host, Cookie, X-App",
            "close, User-Agent",
            "Referer",
            "user@host",
            "[::1]:80",
        ])
        .prop_map(str::to_string),
    ];
    let fields = prop::collection::vec((name, value), 0..8);
    let built = (method, target, version, fields, prop::bool::ANY).prop_map(|(m, t, v, fields, lf_only)| {
        let eol = if lf_only { "\n" } else { "\r\n" };
        let mut head = format!("{m} {t} {v}{eol}");
        for (n, v) in fields {
            head.push_str(&format!("{n}: {v}{eol}"));
        }
        head.push_str(eol);
        head.into_bytes()
    });
    prop_oneof![
        3 => built.clone(),
        2 => (built, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4)).prop_map(|(mut head, edits)| {
            for (at, byte, kind) in edits {
                let i = at.index(head.len() + 1);
                match kind {
                    0 => head.insert(i, byte),
                    1 if i < head.len() => head[i] = byte,
                    _ if i < head.len() => {
                        head.remove(i);
                    }
                    _ => {}
                }
            }
            head
        }),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A head the server should accept: a valid request line, one Host, a
/// body framed one way or none, maybe a WebSocket upgrade, and fields of
/// any token name and visible value (including hop-by-hop ones and
/// `Connection` naming others, among them one the proxy keeps as it came).
fn valid_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "PURGE"]);
    let target = prop_oneof![
        "/[a-zA-Z0-9/._~%!$&'()*+,;=:@-]{0,30}(\\?[a-zA-Z0-9/?=&%-]{0,20})?",
        "http://[a-z0-9.-]{1,12}(:[0-9]{1,5})?(/[a-z0-9?=/]{0,10})?",
    ];
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.5"]);
    let framing = prop_oneof![
        Just(String::new()),
        "0{0,30}[0-9]{1,6}".prop_map(|n| format!("Content-Length: {n}\r\n")),
        Just("Transfer-Encoding: chunked\r\n".to_string()),
        Just("Connection: Upgrade\r\nUpgrade: websocket\r\n".to_string()),
        Just(
            "Connection: keep-alive, Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
                .to_string()
        ),
        // A field the proxy would forward as it came, named hop-by-hop.
        Just("Connection: close, User-Agent\r\nUser-Agent: x/1\r\nAccept-Encoding: gzip\r\n".to_string()),
    ];
    let name = prop_oneof![
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
        prop::sample::select(vec![
            "Cookie",
            "Via",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "TE",
            "Expect",
            "Keep-Alive",
            "Connection",
            "User-Agent",
            "Accept-Encoding",
            "referer",
            "Authorization"
        ])
        .prop_map(str::to_string),
    ];
    let value = "[!-~\u{80}-\u{ff}]([ -~\t]{0,20}[!-~])?";
    let fields = prop::collection::vec((name, value), 0..10);
    (method, target, version, "[a-z0-9.-]{1,16}(:[0-9]{1,5})?", framing, fields).prop_map(
        |(m, t, v, host, framing, fields)| {
            let mut head = format!("{m} {t} {v}\r\nHost: {host}\r\n{framing}");
            for (n, v) in fields {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.into_bytes()
        },
    )
}

// ------------------------------------------------------- the request head

proptest! {
    #![proptest_config(config(3000))]

    /// Any bytes: an answer, never a panic; an accepted head is within the
    /// limits and no prefix of it was accepted before it was complete.
    #[test]
    fn the_request_parser_takes_any_bytes(head in prop_oneof![request_head(), valid_head()], body in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut input = head.clone();
        input.extend_from_slice(&body);
        match fuzz::parse_request(&input) {
            Err(status) => prop_assert!([400, 414, 431, 501, 505].contains(&status), "status {status}"),
            Ok(None) => prop_assert!(input.len() < MAX_HEAD),
            Ok(Some(parsed)) => {
                prop_assert!(parsed.consumed <= input.len().min(MAX_HEAD));
                let headers = parsed.fields();
                prop_assert!(headers.len() <= MAX_FIELDS);
                let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
                prop_assert!(bytes <= parsed.consumed, "fields are the head's own bytes");
                for cut in [parsed.consumed / 3, parsed.consumed / 2, parsed.consumed - 1] {
                    let early = fuzz::parse_request(&input[..cut]);
                    prop_assert!(!matches!(early, Ok(Some(_))), "accepted at {cut} of {}", parsed.consumed);
                }
            }
        }
    }

    /// A head the server accepts, written out for a backend, parses to the
    /// same request: method, origin-form target, end-to-end fields, one
    /// Host, framing and upgrade.
    #[test]
    fn an_accepted_head_round_trips_through_the_backend_head(head in prop_oneof![3 => valid_head(), 1 => request_head()]) {
        let Ok(Some(parsed)) = fuzz::parse_request(&head) else { return Ok(()) };
        let written = fuzz::backend_head(&parsed);
        let again = match fuzz::parse_request(&written) {
            Ok(Some(again)) => again,
            other => return Err(TestCaseError::fail(format!("{other:?} for {:?}", String::from_utf8_lossy(&written)))),
        };
        prop_assert_eq!(again.consumed, written.len());
        prop_assert_eq!(again.request.method(), parsed.request.method());
        let origin = parsed.request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        prop_assert_eq!(again.request.uri().to_string(), origin);
        prop_assert_eq!(again.request.version(), http::Version::HTTP_11);
        let fields = again.fields();
        prop_assert_eq!(end_to_end(&fields), expected_fields(&parsed));
        prop_assert!(fields.get_all("host").iter().count() <= 1);
        prop_assert_eq!(fields.get("host"), parsed.request.headers().get("host"));
        prop_assert_eq!((again.length, again.chunked, again.upgrade), (parsed.length, parsed.chunked, parsed.upgrade));
        prop_assert!(again.keep_alive);
    }
}

/// The fields a backend head carries that came from the client: without
/// the forwarding fields the proxy writes itself and the framing fields it
/// writes for the body (compared as framing).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "x-cutover-version",
        "x-cutover-route",
        "content-length",
        "transfer-encoding",
    ] {
        out.remove(name);
    }
    out
}

/// What should reach the backend of the client's fields: all but the
/// hop-by-hop ones (an upgrade keeps `Upgrade` and gets `Connection: upgrade`) and `Expect`.
fn expected_fields(parsed: &Parsed) -> HeaderMap {
    let mut headers = parsed.fields();
    cutover::proxy::headers::remove_hop_by_hop(&mut headers, parsed.upgrade);
    headers.remove(http::header::EXPECT);
    end_to_end(&headers)
}

// ------------------------------------------------------- the chunk decoder

/// A chunked body from pieces: sizes with leading zeros and extensions,
/// trailer lines, and bytes after it.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>, Vec<u8>)> {
    let chunk =
        (prop::collection::vec(any::<u8>(), 1..64), 0..20usize, "(;[a-z]{1,4}(=[a-z0-9\"]{0,6})?)?", prop::bool::ANY);
    let chunks = prop::collection::vec(chunk, 0..6);
    let trailers = prop::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,12}", 0..3);
    (chunks, trailers, 0..4usize, prop::collection::vec(any::<u8>(), 0..8)).prop_map(
        |(chunks, trailers, last_zeros, rest)| {
            let (mut wire, mut body) = (Vec::new(), Vec::new());
            for (data, zeros, ext, upper) in chunks {
                let size = if upper { format!("{:X}", data.len()) } else { format!("{:x}", data.len()) };
                wire.extend_from_slice(format!("{}{size}{ext}\r\n", "0".repeat(zeros)).as_bytes());
                wire.extend_from_slice(&data);
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(&data);
            }
            wire.extend_from_slice(format!("{}0\r\n", "0".repeat(last_zeros)).as_bytes());
            for t in &trailers {
                wire.extend_from_slice(t.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest);
            (wire, body, trailers.into_iter().map(String::into_bytes).collect(), rest)
        },
    )
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes, in reads of any size: the same outcome, and a body never
    /// longer than its input.
    #[test]
    fn the_chunk_decoder_takes_any_bytes_in_any_reads(input in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (chunked_body(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|((mut wire, ..), at, byte)| {
            let i = at.index(wire.len());
            wire[i] = byte;
            wire
        }),
        // Chunk-size lines about the 4 KiB bound.
        (4085..4105usize).prop_map(|n| format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(n)).into_bytes()),
    ], read in 1..64usize) {
        let whole = fuzz::decode_chunked(&input, input.len());
        prop_assert_eq!(&fuzz::decode_chunked(&input, read), &whole);
        prop_assert_eq!(&fuzz::decode_chunked(&input, 1), &whole);
        if let Ok(Some(decoded)) = whole {
            prop_assert!(decoded.body.len() + decoded.rest.len() <= input.len());
        }
    }

    /// Chunked bodies, leading zeros and extensions included, decode to the
    /// data, the trailer lines and what followed them.
    #[test]
    fn chunked_bodies_decode_to_what_was_sent((wire, body, trailers, rest) in chunked_body(), read in 1..64usize) {
        let decoded = fuzz::decode_chunked(&wire, read);
        prop_assert_eq!(decoded, Ok(Some(fuzz::Decoded { body, trailers, rest })));
    }
}

// ------------------------------------------------------ the response head

/// A field value: visible characters, spaces and tabs inside.
const FIELD_VALUE: &str = "[!-~]([ -~\t]{0,10}[!-~])?";

fn response_head() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![Just(200u16), Just(101), Just(204), Just(304), Just(100), 0..1000u16];
    let name = prop::sample::select(vec!["Content-Length", "Transfer-Encoding", "Connection", "Set-Cookie", "X", ""]);
    let value = prop_oneof!["[0-9]{0,22}", "[ -~]{0,16}", Just("chunked".to_string()), Just("5, 5".to_string())];
    let built = (
        status,
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2"]),
        prop::collection::vec((name, value), 0..6),
    )
        .prop_map(|(status, version, fields)| {
            let mut head = format!("{version} {status} Reason\r\n");
            for (n, v) in fields {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.into_bytes()
        });
    prop_oneof![2 => built, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes from a backend: an answer, never a panic; an accepted head
    /// has a real status code. Read for an HTTP/2 client (no lines kept as
    /// they came), the same head gets the same answer and the same fields,
    /// each name's values in their order.
    #[test]
    fn the_response_parser_takes_any_bytes(head in response_head(), head_request in prop::bool::ANY) {
        let kept = fuzz::parse_response(&head, head_request, true);
        let mapped = fuzz::parse_response(&head, head_request, false);
        match (&kept, &mapped) {
            (Ok(Some(kept)), Ok(Some(mapped))) => {
                prop_assert!((100..=999).contains(&kept.status().as_u16()));
                prop_assert!(kept.headers().len() <= head.len());
                prop_assert_eq!(kept.status(), mapped.status());
                prop_assert_eq!(kept.headers().len(), mapped.headers().len());
                for name in kept.headers().keys() {
                    let values = |r: &http::Response<()>| r.headers().get_all(name).iter().cloned().collect::<Vec<_>>();
                    prop_assert_eq!(values(kept), values(mapped), "{}", name);
                }
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "the two reads differ: {:?} and {:?}", kept, mapped),
        }
    }

    /// Fields the proxy forwards as they came (Server, Date, Vary...) are
    /// the response's fields all the same: every line comes back, each
    /// name's values in their order, however they interleave with others,
    /// and whatever `Connection` names.
    #[test]
    fn every_response_field_comes_back_in_its_order(
        fields in prop_oneof![
            prop::collection::vec((prop::sample::select(vec!["Server", "date", "Vary", "vary", "X-App", "Content-Type", "Set-Cookie"]), FIELD_VALUE), 0..14),
            // Kept lines between others: more runs than the proxy keeps.
            prop::collection::vec(
                ((prop::sample::select(vec!["Server", "date", "Vary"]), FIELD_VALUE), (Just("X-App"), FIELD_VALUE)),
                5..10,
            ).prop_map(|pairs| pairs.into_iter().flat_map(|(kept, other)| [kept, other]).collect()),
        ],
        connection in prop::option::of(prop::sample::select(vec!["keep-alive", "close, X-App", "Vary"])),
    ) {
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for (n, v) in &fields {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(c) = connection {
            head.push_str(&format!("Connection: {c}\r\n"));
        }
        head.push_str("\r\n");
        let response = fuzz::parse_response(head.as_bytes(), false, true).unwrap().unwrap();
        for name in ["server", "date", "vary", "x-app", "content-type", "set-cookie"] {
            let sent: Vec<&str> =
                fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()).collect();
            let got: Vec<&str> = response.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect();
            prop_assert_eq!(got, sent, "{}", name);
        }
    }
}

// ------------------------------------------------------------- cookies

/// The cookie splitter read plainly: pairs split at `;`, names matched
/// exactly, the first of each name wins, values trimmed and unquoted.
fn model<'a>(fields: &'a [String], user: &str, beta: &str) -> cookies::Found<'a> {
    let value_of = |pair: &'a [u8], name: &str| -> Option<&'a [u8]> {
        let value = pair.strip_prefix(name.as_bytes())?.trim_ascii_start().strip_prefix(b"=")?.trim_ascii();
        Some(value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
    };
    let mut found = cookies::Found::default();
    for pair in fields.iter().flat_map(|f| f.as_bytes().split(|&b| b == b';')).map(<[u8]>::trim_ascii_start) {
        if found.user.is_none()
            && let Some(v) = value_of(pair, user)
        {
            found.user = Some(v);
        } else if found.beta.is_none()
            && let Some(v) = value_of(pair, beta)
        {
            found.beta = Some(v);
        }
    }
    found
}

proptest! {
    #![proptest_config(config(3000))]

    /// Cookie fields of any visible bytes, split by HTTP/2 or not: the same
    /// cookies as the plain reading.
    #[test]
    fn the_cookie_splitter_finds_what_a_plain_reading_finds(
        fields in prop::collection::vec(
            prop::collection::vec("( ?(id|id_beta|i|beta|x)? ?= ?\"?[a-z0-9]{0,6}\"? ?)|[ -~\t]{0,12}", 0..6)
                .prop_map(|pairs| pairs.join(";")),
            1..4,
        ),
        more in prop::collection::vec("[ -~\u{80}-\u{ff}]{0,40}", 0..3),
    ) {
        let fields: Vec<String> = fields.into_iter().chain(more).collect();
        let mut headers = HeaderMap::new();
        for f in &fields {
            if let Ok(v) = HeaderValue::from_str(f) {
                headers.append(http::header::COOKIE, v);
            }
        }
        let kept: Vec<String> = headers.get_all(http::header::COOKIE).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        if kept.len() != fields.len() { return Ok(()); }
        prop_assert_eq!(cookies::find(&headers, "id", "id_beta"), model(&fields, "id", "id_beta"));
        prop_assert_eq!(cookies::find(&headers, "beta", "i"), model(&fields, "beta", "i"));
    }

    /// Beta cookie values of any text: read without a panic; unsigned rules
    /// take only `always` and `never`.
    #[test]
    fn the_beta_verifier_takes_any_text(value in "[ -~]{0,120}", now in any::<u64>()) {
        let signed = BetaRules::new("cutover_beta", Some(b"a secret of enough bytes"));
        let _ = signed.read(&value, now);
        let plain = BetaRules::new("cutover_beta", None);
        let read = plain.read(&value, now);
        prop_assert_eq!(read == BetaCookie::Rejected, value != "always" && value != "never");
    }

    /// A signed value reads as its choice until it expires; change any one
    /// character (other than a hex digit's case) and it is rejected.
    #[test]
    fn a_signed_beta_value_is_valid_until_it_expires_and_forged_never(
        always in prop::bool::ANY, expires in 1u64..u64::MAX / 2, at in any::<prop::sample::Index>(), to in 32u8..127,
    ) {
        let rules = BetaRules::new("cutover_beta", Some(b"a secret of enough bytes"));
        let choice = if always { BetaChoice::Always } else { BetaChoice::Never };
        let value = rules.value(choice, expires);
        prop_assert_eq!(rules.read(&value, expires - 1), BetaCookie::Valid(choice));
        prop_assert_eq!(rules.read(&value, expires), BetaCookie::Rejected);
        let mut forged = value.into_bytes();
        let i = at.index(forged.len());
        if forged[i].eq_ignore_ascii_case(&to) {
            return Ok(());
        }
        forged[i] = to;
        let forged = String::from_utf8(forged).unwrap();
        prop_assert_eq!(rules.read(&forged, expires - 1), BetaCookie::Rejected, "{}", forged);
    }
}
