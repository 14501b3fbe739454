//! A chunked request body (RFC 9112 section 7.1), decoded from the connection's buffer.
//!
//! Hand-written rather than taken from hyper, whose decoder is private: the rules are hyper's
//! own, line for line (`hyper::proto::h1::decode`, 1.13), because a request the engine serves
//! must be read exactly as hyper, which served every request before, reads it. A body framed
//! in a way hyper would not read the same could be a smuggled request. So: hex digits with
//! checked arithmetic (an overflow is an error), spaces or tabs only after the digits,
//! extensions skipped up to CR but a bare LF in one refused, at most 16 KiB of extensions per
//! body, CRLF exactly after the size line and after each chunk's data, trailer lines ended by
//! CRLF (a bare LF refused) up to the field limit and 16 KiB, parsed by `httparse` as hyper
//! does. `differential` checks the two agree.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// hyper's limits for extensions and trailers (`CHUNKED_EXTENSIONS_LIMIT`, `TRAILER_LIMIT`).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
const TRAILERS_LIMIT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("invalid chunk size: overflow")]
    Overflow,
    #[error("chunk extension contains a newline")]
    ExtensionNewline,
    #[error("chunk extensions over {EXTENSIONS_LIMIT} bytes")]
    ExtensionsTooLong,
    #[error("no CRLF after a chunk's data")]
    DataEnd,
    #[error("no LF after the last chunk's CR")]
    BodyEnd,
    #[error("invalid chunked trailer: {0}")]
    Trailer(&'static str),
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields, after the last chunk: the body is complete (`End` follows).
    Trailers(HeaderMap),
    /// The body is complete; the buffer starts at the next request.
    End,
    /// The buffer holds no more of the body: read more.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a size line.
    Start,
    Size,
    /// Spaces or tabs after the digits.
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: CR ends the body, anything else starts a trailer line.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
    Done,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// The chunk's size while its line is read, then what is left of its data.
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
    /// The request-field limit (`global.limits.max-header-count`), which hyper applies to
    /// trailer lines too.
    max_trailers: usize,
}

impl Decoder {
    pub fn new(max_trailers: usize) -> Self {
        Self {
            state: State::Start,
            size: 0,
            extensions: 0,
            trailers: None,
            trailer_lines: 0,
            max_trailers,
        }
    }

    /// The body ended: what follows in the buffer is the next request.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `buf`, consuming what it decodes. An error leaves the
    /// connection's framing unknown: it must close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Data => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(self.size).map_or(buf.len(), |s| s.min(buf.len()));
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::More);
            };
            buf.advance(1);
            self.state = self.step(b)?;
            // Done with the trailers' bytes read: a consumer that stops at the trailers frame
            // (hyper's client does) has read the whole body.
            if self.state == State::Done
                && let Some(t) = self.trailers.take()
            {
                return Ok(Decoded::Trailers(trailers(&t, self.trailer_lines)?));
            }
        }
    }

    /// One byte of a size line, a CRLF or the trailers.
    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Start => {
                self.digit(b).ok_or(ChunkError::Size)??;
                State::Size
            }
            State::Size => match b {
                b'\t' | b' ' => State::SizeLws,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => {
                    self.digit(b).ok_or(ChunkError::Size)??;
                    State::Size
                }
            },
            State::SizeLws => match b {
                b'\t' | b' ' => State::SizeLws,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => return Err(ChunkError::Size),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkError::ExtensionNewline),
                _ => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        return Err(ChunkError::ExtensionsTooLong);
                    }
                    State::Extension
                }
            },
            State::SizeLf => match (b, self.size) {
                (b'\n', 0) => State::EndCr,
                (b'\n', _) => State::Data,
                _ => return Err(ChunkError::Size),
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Start,
            State::DataCr | State::DataLf => return Err(ChunkError::DataEnd),
            State::EndCr => {
                if b == b'\n' {
                    return Err(ChunkError::Trailer("bare LF"));
                }
                if b == b'\r' {
                    self.put_trailer(b)?;
                    State::EndLf
                } else {
                    match &mut self.trailers {
                        Some(_) => self.put_trailer(b)?,
                        None => {
                            let mut t = BytesMut::with_capacity(64);
                            t.put_u8(b);
                            self.trailers = Some(t);
                        }
                    }
                    State::Trailer
                }
            }
            State::EndLf if b == b'\n' => {
                self.put_trailer(b)?;
                State::Done
            }
            State::EndLf => return Err(ChunkError::BodyEnd),
            State::Trailer => {
                self.put_trailer(b)?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError::Trailer("bare LF")),
                    _ => State::Trailer,
                }
            }
            State::TrailerLf if b == b'\n' => {
                if self.trailer_lines >= self.max_trailers {
                    return Err(ChunkError::Trailer("more fields than allowed"));
                }
                self.trailer_lines += 1;
                self.put_trailer(b)?;
                State::EndCr
            }
            State::TrailerLf => return Err(ChunkError::Trailer("no LF after CR")),
            State::Data | State::Done => self.state,
        })
    }

    /// Adds a hex digit to the size; `None` when `b` is not one.
    fn digit(&mut self, b: u8) -> Option<Result<(), ChunkError>> {
        let d = char::from(b).to_digit(16)?;
        Some(
            self.size
                .checked_mul(16)
                .and_then(|s| s.checked_add(u64::from(d)))
                .map(|s| self.size = s)
                .ok_or(ChunkError::Overflow),
        )
    }

    /// A trailer byte, kept only once a trailer line began (hyper keeps the end's CRLF only
    /// after one), within the limit.
    fn put_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if let Some(t) = &mut self.trailers {
            t.put_u8(b);
            if t.len() >= TRAILERS_LIMIT {
                return Err(ChunkError::Trailer("over 16 KiB"));
            }
        }
        Ok(())
    }
}

/// The trailer lines, parsed as hyper parses them: `count` slots, every name and value valid.
fn trailers(raw: &[u8], count: usize) -> Result<HeaderMap, ChunkError> {
    let mut slots = vec![httparse::EMPTY_HEADER; count];
    let fields = match httparse::parse_headers(raw, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => return Err(ChunkError::Trailer("incomplete")),
        Err(_) => return Err(ChunkError::Trailer("malformed field")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| ChunkError::Trailer("invalid field name"))?;
        let value =
            HeaderValue::from_bytes(f.value).map_err(|_| ChunkError::Trailer("invalid value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole body of `raw` fed at once and byte by byte: both must agree.
    /// The body's bytes, its trailers, and the bytes after it.
    type Read = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    fn decode(raw: &[u8]) -> Result<Read, ChunkError> {
        let whole = run(raw, raw.len());
        let bytewise = run(raw, 1);
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(raw));
        whole?.ok_or(ChunkError::Trailer("test: incomplete"))
    }

    type Run = Result<Option<Read>, ChunkError>;

    fn run(raw: &[u8], step: usize) -> Run {
        let mut d = Decoder::new(101);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut input = raw.chunks(step);
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => {
                    let mut rest = buf.to_vec();
                    input.for_each(|c| rest.extend_from_slice(c));
                    return Ok(Some((data, trailers, rest)));
                }
                Decoded::More => match input.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => return Ok(None),
                },
            }
        }
    }

    #[test]
    fn chunks_trailers_and_what_follows() {
        let (data, t, rest) =
            decode(b"5\r\nhello\r\n6;ext=1\r\n world\r\nA  \r\n0123456789\r\n0\r\n\r\nGET /")
                .unwrap();
        assert_eq!(data, b"hello world0123456789");
        assert!(t.is_none());
        assert_eq!(rest, b"GET /");
        let (data, t, rest) = decode(b"3\r\nabc\r\n00\r\nX-Sum: 1\r\nx-sum: 2\r\n\r\n").unwrap();
        assert_eq!(data, b"abc");
        let t = t.expect("trailers");
        assert_eq!(t.get_all("x-sum").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(rest.is_empty());
    }

    #[test]
    fn framing_hyper_refuses_is_refused() {
        for (raw, e) in [
            (&b" 5\r\nhello\r\n0\r\n\r\n"[..], ChunkError::Size),
            (b"5 5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5\r\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (
                b"5;a\nb\r\nhello\r\n0\r\n\r\n",
                ChunkError::ExtensionNewline,
            ),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\r\r0\r\n\r\n", ChunkError::DataEnd),
            (b"10000000000000000\r\n", ChunkError::Overflow),
            (b"0\r\n\rX", ChunkError::BodyEnd),
            (b"0\r\nX: y\rZ", ChunkError::Trailer("no LF after CR")),
            (b"0\r\nX y\r\n\r\n", ChunkError::Trailer("malformed field")),
            // hyper 1.13's rule: a trailer line ends with CRLF, never a bare LF.
            (b"0\r\nX: y\n\r\n", ChunkError::Trailer("bare LF")),
            (b"0\r\n\n", ChunkError::Trailer("bare LF")),
            (b"0\r\nX: y\r\n\n", ChunkError::Trailer("bare LF")),
        ] {
            assert_eq!(
                decode(raw).map(|_| ()),
                Err(e),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // The largest size that fits is a size, not an overflow.
        assert_eq!(run(b"ffffffffffffffff\r\nab", 64), Ok(None));
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut raw = b"1;".to_vec();
        raw.resize(raw.len() + EXTENSIONS_LIMIT as usize, b'x');
        raw.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(decode(&raw).map(|_| ()), Err(ChunkError::ExtensionsTooLong));
        let mut raw = b"0\r\n".to_vec();
        for i in 0..102 {
            raw.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(
            decode(&raw).map(|_| ()),
            Err(ChunkError::Trailer("more fields than allowed"))
        );
        let mut raw = b"0\r\nx: ".to_vec();
        raw.resize(TRAILERS_LIMIT + 8, b'v');
        assert_eq!(
            decode(&raw).map(|_| ()),
            Err(ChunkError::Trailer("over 16 KiB"))
        );
    }
}
