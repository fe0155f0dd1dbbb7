//! Reading the request's `Cookie` fields and writing the assignment cookie,
//! without allocating for a returning user.

use http::HeaderMap;
use http::header::COOKIE;

/// The two cookies cutover reads, borrowed from the request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    pub user: Option<&'a str>,
    pub beta: Option<&'a str>,
}

/// Finds the user and beta cookies in every `Cookie` field (HTTP/2 may split
/// them). The first occurrence of each name wins, as browsers send the most
/// specific cookie first.
pub fn find<'a>(headers: &'a HeaderMap, user_name: &str, beta_name: &str) -> Found<'a> {
    let mut found = Found::default();
    for field in headers.get_all(COOKIE) {
        // One pass over the bytes: at each pair's start compare the two names,
        // then jump to the next ';'. Only the values kept need to be text.
        let mut rest = field.as_bytes();
        while !rest.is_empty() {
            rest = rest.trim_ascii_start();
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let pair = &rest[..end];
            // One name may be a prefix of the other ("sess", "sess_beta"): try both.
            let user = found.user.is_none().then(|| value_of(pair, user_name.as_bytes())).flatten();
            let slot = match user {
                Some(v) => Some((&mut found.user, v)),
                None => found
                    .beta
                    .is_none()
                    .then(|| value_of(pair, beta_name.as_bytes()))
                    .flatten()
                    .map(|v| (&mut found.beta, v)),
            };
            if let Some((slot, value)) = slot {
                *slot = std::str::from_utf8(value).ok();
                if found.user.is_some() && found.beta.is_some() {
                    return found;
                }
            }
            rest = rest.get(end + 1..).unwrap_or_default();
        }
    }
    found
}

/// The value of `pair` if its name is exactly `name` (optional spaces
/// before `=`), trimmed and without surrounding quotes.
fn value_of<'p>(pair: &'p [u8], name: &[u8]) -> Option<&'p [u8]> {
    let after = pair.strip_prefix(name)?.trim_ascii_start().strip_prefix(b"=")?;
    let value = after.trim_ascii();
    Some(value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
}

/// A user key taken from a cookie or header must be a short token; anything
/// else is ignored and the user gets a fresh key.
pub fn is_valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| KEY_BYTES[usize::from(b)])
}

/// Letters, digits, `-`, `_`, `.`, `:`.
const KEY_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.' || c == b':';
        b += 1;
    }
    table
};

/// A key minted by the proxy: 16 lower-case hex digits of a 64-bit id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MintedKey([u8; 16]);

impl MintedKey {
    pub fn new(id: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
        }
        MintedKey(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MintedKey({})", self.as_str())
    }
}

/// The assignment cookie's attributes, formatted once per snapshot:
/// `; Path=/; Max-Age=<secs>; HttpOnly; SameSite=Lax`.
pub fn attributes(max_age_secs: u64) -> String {
    format!("; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(COOKIE, HeaderValue::from_str(f).unwrap());
        }
        h
    }

    #[test]
    fn finds_both_cookies_across_split_fields() {
        let h = headers(&["a=1; cutover_id=abc", "theme=dark; cutover_beta=always"]);
        let found = find(&h, "cutover_id", "cutover_beta");
        assert_eq!(found, Found { user: Some("abc"), beta: Some("always") });
    }

    #[test]
    fn first_occurrence_wins_and_quotes_are_removed() {
        let h = headers(&["cutover_id=\"first\"; cutover_id=second"]);
        assert_eq!(find(&h, "cutover_id", "cutover_beta").user, Some("first"));
    }

    #[test]
    fn a_name_that_prefixes_the_other_still_finds_both() {
        let h = headers(&["sess_beta=always; sess=k1"]);
        assert_eq!(find(&h, "sess", "sess_beta"), Found { user: Some("k1"), beta: Some("always") });
        let h = headers(&["sess=k1;sess_beta = never"]);
        assert_eq!(find(&h, "sess_beta", "sess"), Found { user: Some("never"), beta: Some("k1") });
    }

    #[test]
    fn names_must_match_exactly() {
        let h = headers(&["xcutover_id=1; cutover_id_old=2"]);
        assert_eq!(find(&h, "cutover_id", "cutover_beta"), Found::default());
    }

    #[test]
    fn minted_key_is_sixteen_hex_digits() {
        assert_eq!(MintedKey::new(0xdead_beef).as_str(), "00000000deadbeef");
        assert_eq!(MintedKey::new(u64::MAX).as_str(), "ffffffffffffffff");
    }

    #[test]
    fn key_validity() {
        assert!(is_valid_key("00000000deadbeef"));
        assert!(is_valid_key("user-42@x".trim_end_matches("@x")));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key(&"x".repeat(129)));
    }
}
