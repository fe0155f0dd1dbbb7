//! One access log line, formatted by hand into a byte buffer: no
//! allocation, no serde on the request path.
//!
//! Strings are escaped as RFC 8259 requires (`"`, `\` and the control
//! characters U+0000 to U+001F); bytes that are not UTF-8 (a path or a
//! header can carry any byte) become U+FFFD, so a line is always valid
//! UTF-8 and valid JSON.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Record;
use crate::routing::{Reason, Version};

/// Appends `record` as one JSON object and a newline; `now` is its time.
pub fn write_line(out: &mut Vec<u8>, record: &Record<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"time\":\"");
    write_time(out, now);
    out.extend_from_slice(b"\",\"client\":");
    string(out, record.client.as_bytes());
    out.extend_from_slice(b",\"method\":");
    string(out, record.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    string(out, record.path.as_bytes());
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(record.status));
    out.extend_from_slice(b",\"route\":");
    optional(out, record.route.map(str::as_bytes));
    out.extend_from_slice(b",\"version\":");
    optional(out, record.version.map(|v| Version::as_str(v).as_bytes()));
    out.extend_from_slice(b",\"reason\":");
    optional(out, record.reason.map(|r| Reason::as_str(r).as_bytes()));
    out.extend_from_slice(b",\"backend\":");
    optional(out, record.backend.map(str::as_bytes));
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, record.duration);
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, record.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, record.bytes_out);
    out.extend_from_slice(b"}\n");
}

fn optional(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// The bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// Whether `bytes` are all plain (see [`PLAIN`]): eight at a time, in one
/// pass without a branch per byte, the rest by the table.
fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // The top bit of a byte equal to `b` is set (of some above it too, but
    // only when one is: enough to tell whether any is).
    let equal = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        y.wrapping_sub(ONES) & !y
    };
    let (words, rest) = bytes.as_chunks::<8>();
    let mut bad = 0;
    for word in words {
        let x = u64::from_le_bytes(*word);
        // Below 0x20 (the same borrow trick), 0x80 and above, `"`, `\`.
        bad |= (x.wrapping_sub(ONES * 0x20) & !x) | x | equal(x, b'"') | equal(x, b'\\');
    }
    bad & HIGH == 0 && rest.iter().all(|&b| PLAIN[usize::from(b)])
}

/// A JSON string of `bytes`, quotes included.
pub fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    // Most values are plain ASCII and copied at once.
    if plain(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for chunk in bytes.utf8_chunks() {
        escape(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

/// Escapes valid UTF-8: runs of plain bytes are copied at once.
fn escape(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut plain = 0;
    for (i, &b) in text.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]],
            _ => continue,
        };
        out.extend_from_slice(&text[plain..i]);
        out.extend_from_slice(escaped);
        plain = i + 1;
    }
    out.extend_from_slice(&text[plain..]);
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Milliseconds rounded to the microsecond, as serde_json writes the f64
/// `1.5`, `0.0` or `12.25` (the shortest form, at least one decimal).
fn millis(out: &mut Vec<u8>, duration: Duration) {
    // u64 arithmetic: a u128 division costs a call per line.
    let micros =
        duration.as_secs().saturating_mul(1_000_000).saturating_add(u64::from((duration.subsec_nanos() + 500) / 1000));
    number(out, micros / 1000);
    out.push(b'.');
    let mut fraction = micros % 1000;
    if fraction == 0 {
        out.push(b'0');
        return;
    }
    let mut width = 3;
    while fraction % 10 == 0 {
        fraction /= 10;
        width -= 1;
    }
    let mut digits = [b'0'; 3];
    for i in (0..width).rev() {
        digits[i] = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

thread_local! {
    /// "YYYY-MM-DDTHH:MM:SS" of the last second this thread logged in.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, *b"1970-01-01T00:00:00")) };
}

/// RFC 3339 in UTC with milliseconds; the date and time of day are
/// formatted once per second per thread.
fn write_time(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, ms) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            *cache = (secs, date_time(secs));
        }
        out.extend_from_slice(&cache.1);
    });
    out.extend_from_slice(&[b'.', b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8, b'Z']);
}

/// "YYYY-MM-DDTHH:MM:SS" of a Unix time, in UTC (proleptic Gregorian,
/// years up to 9999): the civil-from-days algorithm of Howard Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms". No allocation.
pub fn date_time(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).min(9999);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    text
}

#[cfg(test)]
mod tests;
