//! Who may use the dashboard: the holder of the printed token, from a page
//! of the dashboard's own origin.
//!
//! - **Host**: every request must name the listen address in `Host`; any
//!   other name may be a DNS-rebinding attack (a hostile site whose name
//!   now resolves to 127.0.0.1).
//! - **Token → session**: `/?token=T` with the right token sets a session
//!   cookie (HttpOnly, SameSite=Strict) and redirects to `/`, so the token
//!   leaves the address bar. The cookie is `nonce.mac`: signed with a key
//!   that lives only in this process, so nothing is stored per session.
//! - **Changes** are POSTs that carry the session's CSRF token (a second MAC
//!   of the nonce, written into the page) in a header, and whose `Origin`
//!   (and `Sec-Fetch-Site`), when the browser sends them, are our own.

use std::net::SocketAddr;

use http::{HeaderMap, header};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The header that carries the CSRF token on POSTs.
pub const CSRF_HEADER: &str = "x-cutover-csrf";

pub struct Access {
    /// The address in the printed URL; `Host` must be this.
    pub authority: String,
    token: String,
    key: hmac::Key,
    cookie_name: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 421: the Host is not ours.
    Host(String),
    /// 401: no token, no valid session.
    NoSession,
    /// 403: a POST without the right CSRF token or from another origin.
    Forbidden(&'static str),
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The system RNG fails only on a broken system; a zero nonce is still
    // unguessable through its MAC, but a zero token would not be.
    if SystemRandom::new().fill(&mut buf).is_err() {
        buf = (0..bytes).map(|_| rand::random::<u8>()).collect();
    }
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality (both sides hashed, so lengths leak nothing).
fn same(a: &str, b: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, a.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, b.as_bytes());
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// A fresh token and key for a dashboard listening on `addr`.
    pub fn new(addr: SocketAddr) -> Access {
        let key_bytes = random_hex(32);
        Access {
            authority: addr.to_string(),
            token: random_hex(16),
            key: hmac::Key::new(hmac::HMAC_SHA256, key_bytes.as_bytes()),
            // Cookies are per host, not per port: two dashboards must not share one.
            cookie_name: format!("cutover_dashboard_{}", addr.port()),
        }
    }

    #[cfg(test)]
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.authority, self.token)
    }

    /// The Host check (DNS rebinding).
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if host.eq_ignore_ascii_case(&self.authority) { Ok(()) } else { Err(Refusal::Host(host.to_string())) }
    }

    /// Whether `token` (from `?token=`) is the printed one.
    pub fn token_matches(&self, token: &str) -> bool {
        same(token, &self.token)
    }

    fn mac(&self, purpose: &str, nonce: &str) -> String {
        hex(hmac::sign(&self.key, format!("{purpose}.{nonce}").as_bytes()).as_ref())
    }

    /// A new session: its `Set-Cookie` value.
    pub fn new_session(&self) -> String {
        let nonce = random_hex(16);
        format!("{}={nonce}.{}; Path=/; HttpOnly; SameSite=Strict", self.cookie_name, self.mac("session", &nonce))
    }

    /// The nonce of the request's valid session cookie.
    pub fn session(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let prefix = format!("{}=", self.cookie_name);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(prefix.as_str()))
            .find_map(|value| {
                let (nonce, mac) = value.split_once('.')?;
                same(mac, &self.mac("session", nonce)).then(|| nonce.to_string())
            })
            .ok_or(Refusal::NoSession)
    }

    /// The CSRF token the page of this session sends back.
    pub fn csrf(&self, nonce: &str) -> String {
        self.mac("csrf", nonce)
    }

    /// A change must come from our own page: CSRF header, and Origin /
    /// Sec-Fetch-Site when present.
    pub fn check_change(&self, nonce: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(origin) = value("origin")
            && !origin.eq_ignore_ascii_case(&format!("http://{}", self.authority))
        {
            return Err(Refusal::Forbidden("the request comes from another origin"));
        }
        if let Some(site) = value("sec-fetch-site")
            && site != "same-origin"
        {
            return Err(Refusal::Forbidden("the request comes from another site"));
        }
        match value(CSRF_HEADER) {
            Some(t) if same(t, &self.csrf(nonce)) => Ok(()),
            _ => Err(Refusal::Forbidden("missing or wrong CSRF token; reload the page")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sessions_are_signed_and_csrf_is_per_session() {
        let access = Access::new("127.0.0.1:3100".parse().unwrap());
        assert_eq!(access.token().len(), 32);
        assert!(access.token_matches(access.token()));
        assert!(!access.token_matches("0"));
        let set = access.new_session();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let cookie = set.split(';').next().unwrap();
        let nonce = access.session(&headers(&[("cookie", &format!("other=1; {cookie}"))])).unwrap();
        let forged = format!("{}.{}", cookie.split('.').next().unwrap(), "00".repeat(32));
        assert_eq!(access.session(&headers(&[("cookie", &forged)])), Err(Refusal::NoSession));
        // Another dashboard's cookie (other key) is not a session here.
        let other = Access::new("127.0.0.1:3100".parse().unwrap());
        assert_eq!(other.session(&headers(&[("cookie", cookie)])), Err(Refusal::NoSession));

        let csrf = access.csrf(&nonce);
        let ok =
            headers(&[(CSRF_HEADER, &csrf), ("origin", "http://127.0.0.1:3100"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(access.check_change(&nonce, &ok), Ok(()));
        assert!(access.check_change(&nonce, &headers(&[(CSRF_HEADER, &csrf)])).is_ok(), "Origin is optional");
        for bad in [
            headers(&[]),
            headers(&[(CSRF_HEADER, &access.csrf("another-session"))]),
            headers(&[(CSRF_HEADER, &csrf), ("origin", "http://evil.example")]),
            headers(&[(CSRF_HEADER, &csrf), ("sec-fetch-site", "cross-site")]),
        ] {
            assert!(matches!(access.check_change(&nonce, &bad), Err(Refusal::Forbidden(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_our_own_host_is_served() {
        let access = Access::new("127.0.0.1:3100".parse().unwrap());
        assert_eq!(access.check_host(&headers(&[("host", "127.0.0.1:3100")])), Ok(()));
        for host in ["evil.example:3100", "127.0.0.1", "localhost:3100", "127.0.0.1:3101"] {
            assert_eq!(access.check_host(&headers(&[("host", host)])), Err(Refusal::Host(host.into())));
        }
        assert_eq!(access.check_host(&HeaderMap::new()), Err(Refusal::Host(String::new())));
        assert_eq!(Access::new("[::1]:9".parse().unwrap()).url().split("/?").next(), Some("http://[::1]:9"));
    }
}
