//! Body framing, decoded from a connection's read buffer (request bodies
//! read by the server, response bodies read by the client):
//! `Content-Length` bytes, or chunks until the last one and the trailer
//! section, whose field lines are handed out one by one (the server drops
//! them, as RFC 9112 §7.1.2 allows; the client passes them on).

use bytes::{Buf, Bytes, BytesMut};

use super::parse::Framing;

/// The longest chunk-size line (size, extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// The body ended (or there was none).
    Done,
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// Waiting for a chunk-size line.
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer section after the last chunk, with the bytes seen so far.
    Trailers(usize),
    /// The body was malformed: the connection cannot be used again.
    Failed,
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// A trailer field line, without its CRLF.
    Trailer(Bytes),
    End,
    /// More bytes are needed from the connection.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl From<Framing> for Decoder {
    fn from(f: Framing) -> Decoder {
        match f {
            Framing::None => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Size,
        }
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        let result = self.step(buf);
        if result.is_err() {
            *self = Decoder::Failed;
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Failed => return Err(Malformed("the body was malformed")),
                Decoder::Length(left) | Decoder::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = match (*self, left) {
                        (Decoder::Length(_), 0) => Decoder::Done,
                        (Decoder::Length(_), n) => Decoder::Length(n),
                        (_, 0) => Decoder::DataEnd,
                        (_, n) => Decoder::Data(n),
                    };
                    return Ok(Step::Data(data));
                }
                Decoder::Size => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_SIZE_LINE {
                            return Err(Malformed("chunk-size line too long"));
                        }
                        return Ok(Step::More);
                    };
                    // The same bound whether the line came in one read or many.
                    if end > MAX_SIZE_LINE {
                        return Err(Malformed("chunk-size line too long"));
                    }
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 1);
                    *self = if size == 0 { Decoder::Trailers(0) } else { Decoder::Data(size) };
                }
                Decoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::Size;
                }
                Decoder::Trailers(seen) => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(Malformed("trailer section too large"));
                        }
                        return Ok(Step::More);
                    };
                    let line = &buf[..end];
                    if line.last() != Some(&b'\r') {
                        return Err(Malformed("trailer line not ended by CRLF"));
                    }
                    let empty = line.len() == 1;
                    if !empty && !line.contains(&b':') {
                        return Err(Malformed("malformed trailer field"));
                    }
                    if seen + end + 1 > MAX_TRAILERS {
                        return Err(Malformed("trailer section too large"));
                    }
                    let line = buf.split_to(end + 1);
                    if empty {
                        *self = Decoder::Done;
                    } else {
                        *self = Decoder::Trailers(seen + end + 1);
                        return Ok(Step::Trailer(line.freeze().slice(..end - 1)));
                    }
                }
            }
        }
    }
}

/// A chunk-size line without its LF: hex digits, optional extensions, CR.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let Some((b'\r', line)) = line.split_last().map(|(l, rest)| (*l, rest)) else {
        return Err(Malformed("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("invalid chunk size"));
    }
    // Leading zeros are valid however many there are (the line is bounded).
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits - zeros > 15 {
        return Err(Malformed("chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.iter().position(|&b| b != b' ' && b != b'\t').map_or(&[][..], |i| &rest[i..]);
    if !ext.is_empty() && (ext[0] != b';' || ext.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)) {
        return Err(Malformed("invalid chunk extension"));
    }
    let mut size = 0u64;
    for &b in &line[zeros..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and collects the body.
    fn decode_all(mut d: Decoder, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::Trailer(_) => {}
                Step::End => return Ok((body, buf.to_vec())),
                Step::More => {
                    if fed == input.len() {
                        return Err(Malformed("input ended"));
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let input = b"5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1\r\n";
        for step in 1..input.len() {
            let (body, rest) = decode_all(Decoder::Size, input, step).unwrap();
            assert_eq!(body, b"hello, world!!!", "step {step}");
            // What follows the body stays for the next request.
            assert!(b"GET / HTTP/1.1\r\n".starts_with(&rest), "step {step}");
        }
    }

    #[test]
    fn trailer_lines_come_out_one_by_one() {
        let mut d = Decoder::Size;
        let mut buf = BytesMut::from(&b"0\r\nX-Sum: 1\r\nX-Other: two\r\n\r\nnext"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Step::Trailer(Bytes::from_static(b"X-Sum: 1"))));
        assert_eq!(d.decode(&mut buf), Ok(Step::Trailer(Bytes::from_static(b"X-Other: two"))));
        assert_eq!(d.decode(&mut buf), Ok(Step::End));
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn content_length_bodies_stop_at_their_length() {
        let (body, rest) = decode_all(Decoder::Length(5), b"helloGET", 3).unwrap();
        assert_eq!(body, b"hello");
        assert!(b"GET".starts_with(&rest), "{rest:?}");
    }

    #[test]
    fn malformed_chunks_fail_and_stay_failed() {
        for input in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"ffffffffffffffffff\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"-5\r\nhello\r\n",
        ] {
            let mut d = Decoder::Size;
            assert!(decode_all(d, input, 64).is_err(), "{:?}", String::from_utf8_lossy(input));
            let mut buf = BytesMut::from(input);
            while let Ok(Step::Data(_) | Step::Trailer(_)) = d.decode(&mut buf) {}
            assert_eq!(d.decode(&mut buf), Err(Malformed("the body was malformed")));
        }
    }

    #[test]
    fn chunk_size_lines_are_bounded() {
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE));
        for step in [64, long.len()] {
            assert!(decode_all(Decoder::Size, long.as_bytes(), step).is_err(), "in reads of {step}");
        }
        assert_eq!(chunk_size(b"fffffffffffffff\r"), Ok(0xfff_ffff_ffff_ffff));
        assert_eq!(chunk_size(b"1a ; name=\"v\"\r"), Ok(26));
    }

    #[test]
    fn chunk_sizes_with_leading_zeros_are_valid_however_many() {
        let zeros = "0".repeat(200);
        let input = format!("{zeros}5\r\nhello\r\n{zeros}\r\n\r\n");
        let (body, rest) = decode_all(Decoder::Size, input.as_bytes(), 7).unwrap();
        assert_eq!((body.as_slice(), rest.as_slice()), (&b"hello"[..], &b""[..]));
        assert_eq!(chunk_size(format!("{zeros}fffffffffffffff\r").as_bytes()), Ok(0xfff_ffff_ffff_ffff));
        assert!(chunk_size(b"1000000000000000\r").is_err(), "16 significant digits");
    }
}
