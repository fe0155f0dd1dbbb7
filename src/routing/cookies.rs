//! Reading the request's `Cookie` fields and writing the assignment cookie,
//! without allocating for a returning user.

use http::HeaderMap;
use http::header::COOKIE;

/// The two cookies cutover reads, borrowed from the request as bytes: a
/// user key is checked with [`is_valid_key`] (ASCII only), a beta value is
/// read as text by the beta rules.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    pub user: Option<&'a [u8]>,
    pub beta: Option<&'a [u8]>,
}

/// Finds the user and beta cookies in every `Cookie` field (HTTP/2 may split
/// them). The first occurrence of each name wins, as browsers send the most
/// specific cookie first.
pub fn find<'a>(headers: &'a HeaderMap, user_name: &str, beta_name: &str) -> Found<'a> {
    let (user_name, beta_name) = (user_name.as_bytes(), beta_name.as_bytes());
    let (user_first, beta_first) = (user_name.first().copied(), beta_name.first().copied());
    let mut found = Found::default();
    for field in headers.get_all(COOKIE) {
        let done = each_pair(field.as_bytes(), |pair| {
            // Look at the names only when the pair's first byte fits.
            let pair = pair.trim_ascii_start();
            let first = pair.first().copied();
            if first.is_none() || (first != user_first && first != beta_first) {
                return false;
            }
            // One name may be a prefix of the other ("sess", "sess_beta"): try both.
            if found.user.is_none()
                && let Some(value) = value_of(pair, user_name)
            {
                found.user = Some(value);
            } else if found.beta.is_none()
                && let Some(value) = value_of(pair, beta_name)
            {
                found.beta = Some(value);
            }
            found.user.is_some() && found.beta.is_some()
        });
        if done {
            break;
        }
    }
    found
}

/// Calls `pair` with each `;`-separated piece of `field` in order until it
/// returns true; returns whether it did. The separators are found eight
/// bytes at a time in one pass: cookie pairs are short, where a vectorised
/// search per pair costs more to set up than it saves.
fn each_pair<'a>(field: &'a [u8], mut pair: impl FnMut(&'a [u8]) -> bool) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const SEMICOLONS: u64 = 0x0101_0101_0101_0101 * b';' as u64;
    let mut start = 0;
    let (words, tail) = field.as_chunks::<8>();
    for (n, word) in words.iter().enumerate() {
        // x has a zero byte exactly where the word has a ';'; flag those
        // bytes' high bits (exact: no carry crosses a byte).
        let x = u64::from_le_bytes(*word) ^ SEMICOLONS;
        let mut flags = !(((x & LOW7) + LOW7) | x | LOW7);
        while flags != 0 {
            let at = 8 * n + (flags.trailing_zeros() / 8) as usize;
            if pair(&field[start..at]) {
                return true;
            }
            start = at + 1;
            flags &= flags - 1;
        }
    }
    let offset = 8 * words.len();
    for (i, &b) in tail.iter().enumerate() {
        if b == b';' {
            if pair(&field[start..offset + i]) {
                return true;
            }
            start = offset + i + 1;
        }
    }
    pair(&field[start..])
}

/// The value of `pair` if its name is exactly `name` (optional spaces
/// before `=`), trimmed and without surrounding quotes.
fn value_of<'p>(pair: &'p [u8], name: &[u8]) -> Option<&'p [u8]> {
    // Pairs that share the name's first byte mostly differ in its last.
    if pair.get(name.len().checked_sub(1)?) != name.last() {
        return None;
    }
    let after = pair.strip_prefix(name)?.trim_ascii_start().strip_prefix(b"=")?;
    let value = after.trim_ascii();
    Some(value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
}

/// A user key taken from a cookie or header must be a short token; anything
/// else is ignored and the user gets a fresh key.
pub fn is_valid_key(key: &[u8]) -> bool {
    (1..=128).contains(&key.len()) && key.iter().all(|&b| KEY_BYTES[usize::from(b)])
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
        assert_eq!(found, Found { user: Some(&b"abc"[..]), beta: Some(&b"always"[..]) });
    }

    #[test]
    fn first_occurrence_wins_and_quotes_are_removed() {
        let h = headers(&["cutover_id=\"first\"; cutover_id=second"]);
        assert_eq!(find(&h, "cutover_id", "cutover_beta").user, Some(&b"first"[..]));
    }

    #[test]
    fn a_name_that_prefixes_the_other_still_finds_both() {
        let h = headers(&["sess_beta=always; sess=k1"]);
        assert_eq!(find(&h, "sess", "sess_beta"), Found { user: Some(&b"k1"[..]), beta: Some(&b"always"[..]) });
        let h = headers(&["sess=k1;sess_beta = never"]);
        assert_eq!(find(&h, "sess_beta", "sess"), Found { user: Some(&b"never"[..]), beta: Some(&b"k1"[..]) });
    }

    #[test]
    fn names_must_match_exactly() {
        let h = headers(&["xcutover_id=1; cutover_id_old=2"]);
        assert_eq!(find(&h, "cutover_id", "cutover_beta"), Found::default());
    }

    #[test]
    fn pairs_split_exactly_at_each_semicolon() {
        // Separators at every position in and after the first words, next
        // to high bytes and ':' (one more than ';'), which the word trick
        // must not mistake for a separator.
        for len in 0..40 {
            for at in 0..=len {
                let mut bytes: Vec<u8> = (0..len).map(|i| [b'a', 0xbb, 0x80, 0xff, b':', b'<'][i % 6]).collect();
                for gap in [0, 1, 3, 9] {
                    if let Some(b) = bytes.get_mut(at + gap) {
                        *b = b';';
                    }
                }
                let mut pieces = Vec::new();
                assert!(!each_pair(&bytes, |p| {
                    pieces.push(p.to_vec());
                    false
                }));
                let want: Vec<Vec<u8>> = bytes.split(|&b| b == b';').map(<[u8]>::to_vec).collect();
                assert_eq!(pieces, want, "{bytes:?}");
            }
        }
    }

    #[test]
    fn pair_scan_stops_when_asked() {
        let mut seen = 0;
        assert!(each_pair(b"a=1; b=2; c=3", |p| {
            seen += 1;
            p.starts_with(b" b")
        }));
        assert_eq!(seen, 2);
    }

    #[test]
    fn minted_key_is_sixteen_hex_digits() {
        assert_eq!(MintedKey::new(0xdead_beef).as_str(), "00000000deadbeef");
        assert_eq!(MintedKey::new(u64::MAX).as_str(), "ffffffffffffffff");
    }

    #[test]
    fn key_validity() {
        assert!(is_valid_key(b"00000000deadbeef"));
        assert!(is_valid_key(b"user-42.a_b:c"));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(b"a b"));
        assert!(!is_valid_key("caf\u{e9}".as_bytes()));
        assert!(!is_valid_key("x".repeat(129).as_bytes()));
    }
}
