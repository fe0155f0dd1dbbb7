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
        // Bytes, not `to_str()`: only the two values we keep need to be text.
        for pair in field.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
            let name = pair[..eq].trim_ascii();
            let slot = if found.user.is_none() && name == user_name.as_bytes() {
                &mut found.user
            } else if found.beta.is_none() && name == beta_name.as_bytes() {
                &mut found.beta
            } else {
                continue;
            };
            let value = pair[eq + 1..].trim_ascii();
            let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
            *slot = std::str::from_utf8(value).ok();
            if found.user.is_some() && found.beta.is_some() {
                return found;
            }
        }
    }
    found
}

/// A user key taken from a cookie or header must be a short token; anything
/// else is ignored and the user gets a fresh key.
pub fn is_valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

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
