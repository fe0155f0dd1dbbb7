//! Reading HTTP/1.1 off a raw socket, for tests that control every byte
//! (tests/http1.rs from the client side, tests/upstream_http1.rs from both).

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes read off a socket and not yet consumed, with the HTTP/1.1 framing
/// both ends of these tests need. Errors for a stream that ended midway
/// start with "closed".
pub struct Reader {
    read: OwnedReadHalf,
    pub buf: Vec<u8>,
    /// The trailer field lines of the last chunked body read.
    pub trailers: Vec<String>,
}

impl Reader {
    pub fn new(read: OwnedReadHalf) -> Reader {
        Reader { read, buf: Vec::new(), trailers: Vec::new() }
    }

    /// Reads more; 0 at the end of the stream (a reset counts as one).
    pub async fn fill(&mut self) -> usize {
        self.buf.reserve(16 * 1024);
        self.read.read_buf(&mut self.buf).await.unwrap_or(0)
    }

    /// A head without its blank line; `None` when the stream ended before its first byte.
    pub async fn head(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Ok(Some(lossy(&head[..i])));
            }
            if self.fill().await == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(format!("closed inside a head: {:?}", lossy(&self.buf))),
                };
            }
        }
    }

    pub async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                return Err(format!("closed after {} of {n} body bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    pub async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(lossy(&line[..i]));
            }
            if self.fill().await == 0 {
                return Err(format!("closed inside a chunked body: {:?}", lossy(&self.buf)));
            }
        }
    }

    /// A chunked body, decoded; its trailer lines go to `trailers`.
    pub async fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad chunk size line {line:?}"));
            }
            let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {line:?}"))?;
            if size == 0 {
                self.trailers.clear();
                loop {
                    let line = self.line().await?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    self.trailers.push(line);
                }
            }
            body.extend(self.take(size).await?);
            let end = self.line().await?;
            if !end.is_empty() {
                return Err(format!("chunk data followed by {end:?}, not CRLF"));
            }
        }
    }

    pub async fn until_closed(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}
