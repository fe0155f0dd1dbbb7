//! Config values whose TOML type is a string (or number) with a meaning:
//! durations, addresses, backends, enumerations, paths. Each kind says what it
//! expects, so a value of the wrong type is reported as, for example,
//! `server.drain_timeout: expected a duration such as "2s", "500ms" or "30d",
//! found the number 30` rather than in a deserializer's words.
//!
//! The checks of the text itself (does "2x" parse as a duration?) stay in
//! [`super::validate`]; here only the TOML type is checked.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// What a string value of one kind is, in the words of an error message.
pub trait Kind {
    /// "a duration such as ..." : what one value should be.
    const EXPECTED: &'static str;
    /// "addresses such as [...]" : what the items of a list of them should be.
    const PLURAL: &'static str = "strings";
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident: $expected:expr $(, $plural:expr)?;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl Kind for $name {
            const EXPECTED: &'static str = $expected;
            $(const PLURAL: &'static str = $plural;)?
        }
    )*};
}

kinds! {
    Duration: "a duration such as \"2s\", \"500ms\" or \"30d\"";
    Address: "an address such as \"0.0.0.0:8080\" or \"[::1]:8080\"",
        "addresses such as [\"0.0.0.0:8080\"]";
    AdminListen: "\"unix:/path/to/admin.sock\" or an address such as \"127.0.0.1:9901\"";
    Backend: "\"host:port\" such as \"10.0.1.10:8080\"", "\"host:port\" strings such as [\"10.0.1.10:8080\"]";
    Balance: "\"round_robin\" or \"least_requests\"";
    NewKey: "\"random\" or \"client_ip\"";
    AccessLog: "\"json\" or \"off\"";
    /// A file the config points to (relative paths are from the config's directory).
    FilePath: "a file path";
    Host: "a host such as \"example.com\", \"*.example.com\" or \"*\"";
    /// A URL path: route prefixes, health checks, the beta enroll path.
    UrlPath: "a path starting with \"/\"";
    CookieName: "a cookie name";
    HeaderName: "a header name such as \"X-User-Id\"";
}

/// A string of kind `K`: reads as the `String` it holds.
pub struct Str<K> {
    text: String,
    kind: PhantomData<K>,
}

impl<K> Deref for Str<K> {
    type Target = String;

    fn deref(&self) -> &String {
        &self.text
    }
}

impl<K> AsRef<str> for Str<K> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<K> fmt::Debug for Str<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<'de, K: Kind> Deserialize<'de> for Str<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<K>(PhantomData<K>);
        impl<K: Kind> Visitor<'_> for Expect<K> {
            type Value = Str<K>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::EXPECTED)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<K>, E> {
                Ok(Str { text: v.to_string(), kind: PhantomData })
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<K>, E> {
                Ok(Str { text: v, kind: PhantomData })
            }
        }
        deserializer.deserialize_string(Expect(PhantomData))
    }
}

/// An array of strings of kind `K`, each with its place in the file.
pub struct List<K>(Vec<Spanned<Str<K>>>);

impl<K> Deref for List<K> {
    type Target = Vec<Spanned<Str<K>>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K> fmt::Debug for List<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|s| s.get_ref())).finish()
    }
}

impl<'de, K: Kind> Deserialize<'de> for List<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<K>(PhantomData<K>);
        impl<'de, K: Kind> Visitor<'de> for Expect<K> {
            type Value = List<K>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of {}", K::PLURAL)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<K>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }
        }
        deserializer.deserialize_seq(Expect(PhantomData))
    }
}

/// A canary weight as written: `5` or `2.5`.
#[derive(Debug, Clone, Copy)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = Percent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number 0..100")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Ok(Percent(v))
            }
        }
        deserializer.deserialize_any(Expect)
    }
}

/// A fraction as written: `1`, `0.01`.
#[derive(Debug, Clone, Copy)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = Fraction;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fraction above 0 and at most 1, such as 0.01")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Fraction, E> {
                Ok(Fraction(v))
            }
        }
        deserializer.deserialize_any(Expect)
    }
}

/// A size in bytes as written: `65536`, or a string such as `"64k"` or `"1MiB"`.
#[derive(Debug, Clone)]
pub enum Size {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect;
        impl Visitor<'_> for Expect {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 65536, \"64k\" or \"1m\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Expect)
    }
}
