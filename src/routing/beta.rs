//! Beta-tester cookies: `cutover_beta=always` (canary, even at weight 0) and
//! `cutover_beta=never` (stable).
//!
//! With `beta.secret_file` set, only signed values count. The signed format is
//! meant to be minted by any application:
//!
//! ```text
//! value   = choice "." expires "." mac
//! choice  = "always" | "never"
//! expires = Unix time in seconds (decimal) after which the value is ignored
//! mac     = lower-case hex of HMAC-SHA256(secret, choice "." expires)
//! ```
//! `secret` is the content of the secret file with trailing whitespace removed.

use ring::hmac;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaChoice {
    Always,
    Never,
}

impl BetaChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            BetaChoice::Always => "always",
            BetaChoice::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<BetaChoice> {
        match s {
            "always" => Some(BetaChoice::Always),
            "never" => Some(BetaChoice::Never),
            _ => None,
        }
    }
}

/// What a beta cookie value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaCookie {
    Valid(BetaChoice),
    /// Present but unsigned, forged, expired or malformed: the user is treated
    /// as a plain user.
    Rejected,
}

/// How beta cookies are read in one snapshot.
#[derive(Clone)]
pub struct BetaRules {
    pub cookie: String,
    key: Option<hmac::Key>,
}

impl std::fmt::Debug for BetaRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BetaRules").field("cookie", &self.cookie).field("signed", &self.key.is_some()).finish()
    }
}

impl BetaRules {
    pub fn new(cookie: &str, secret: Option<&[u8]>) -> Self {
        BetaRules { cookie: cookie.to_string(), key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)) }
    }

    pub fn signed(&self) -> bool {
        self.key.is_some()
    }

    /// Reads a cookie value at time `now` (Unix seconds).
    pub fn read(&self, value: &str, now: u64) -> BetaCookie {
        let Some(key) = &self.key else {
            return BetaChoice::parse(value).map_or(BetaCookie::Rejected, BetaCookie::Valid);
        };
        verify(key, value, now).map_or(BetaCookie::Rejected, BetaCookie::Valid)
    }

    /// The value to set for `choice`, valid until `expires` (signed when a
    /// secret is configured).
    pub fn value(&self, choice: BetaChoice, expires: u64) -> String {
        match &self.key {
            None => choice.as_str().to_string(),
            Some(key) => sign(key, choice, expires),
        }
    }
}

fn verify(key: &hmac::Key, value: &str, now: u64) -> Option<BetaChoice> {
    let (signed, mac_hex) = value.rsplit_once('.')?;
    let (choice, expires) = signed.split_once('.')?;
    let choice = BetaChoice::parse(choice)?;
    if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expires: u64 = expires.parse().ok()?;
    if expires <= now {
        return None;
    }
    let mut mac = [0u8; 32];
    decode_hex(mac_hex, &mut mac)?;
    hmac::verify(key, signed.as_bytes(), &mac).ok()?;
    Some(choice)
}

fn sign(key: &hmac::Key, choice: BetaChoice, expires: u64) -> String {
    let signed = format!("{}.{expires}", choice.as_str());
    let tag = hmac::sign(key, signed.as_bytes());
    let mut out = signed;
    out.push('.');
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A signed value for `cutover beta mint`.
pub fn mint(secret: &[u8], choice: BetaChoice, expires: u64) -> String {
    sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), choice, expires)
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn unsigned_values_count_without_a_secret() {
        let rules = BetaRules::new("cutover_beta", None);
        assert_eq!(rules.read("always", 0), BetaCookie::Valid(BetaChoice::Always));
        assert_eq!(rules.read("never", 0), BetaCookie::Valid(BetaChoice::Never));
        assert_eq!(rules.read("sometimes", 0), BetaCookie::Rejected);
    }

    #[test]
    fn signed_value_is_accepted_until_it_expires() {
        let rules = BetaRules::new("cutover_beta", Some(SECRET));
        let value = mint(SECRET, BetaChoice::Always, 2_000);
        assert_eq!(rules.read(&value, 1_999), BetaCookie::Valid(BetaChoice::Always));
        assert_eq!(rules.read(&value, 2_000), BetaCookie::Rejected);
    }

    #[test]
    fn with_a_secret_unsigned_forged_and_altered_values_are_rejected() {
        let rules = BetaRules::new("cutover_beta", Some(SECRET));
        let good = mint(SECRET, BetaChoice::Never, 5_000);
        let other_key = mint(b"another secret of enough length!", BetaChoice::Always, 5_000);
        let promoted = good.replacen("never", "always", 1);
        let extended = good.replacen("5000", "9000", 1);
        for bad in ["always", "never", "always.5000", "always.5000.zz", other_key.as_str(), &promoted, &extended] {
            assert_eq!(rules.read(bad, 1), BetaCookie::Rejected, "{bad}");
        }
        assert_eq!(rules.read(&good, 1), BetaCookie::Valid(BetaChoice::Never));
    }

    /// The documented format, computed independently: HMAC-SHA256 of
    /// "always.1767225600" with the key "0123456789abcdef0123456789abcdef".
    #[test]
    fn signed_format_golden_vector() {
        assert_eq!(mint(SECRET, BetaChoice::Always, 1_767_225_600), format!("always.1767225600.{}", GOLDEN_MAC));
    }

    const GOLDEN_MAC: &str = "8cd2017f9894f441e0ae441e02b67130b167561610fffe72d06f99ade34cf705";
}
