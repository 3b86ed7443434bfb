//! HTTP/1.x framing: request heads parsed with httparse, bodies by length or
//! chunked encoding, and answers written into an output buffer.
//!
//! Nothing here touches a socket. The connection code feeds bytes in and
//! gets back either a complete request or an [`HttpError`] that already
//! knows its status code and whether the connection can be trusted after it.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use crate::wire;

/// Most header lines accepted in one request head.
const MAX_HEADERS: usize = 64;

/// The answer statuses metricast uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 408.
    RequestTimeout,
    /// 411.
    LengthRequired,
    /// 413.
    PayloadTooLarge,
    /// 417.
    ExpectationFailed,
    /// 426.
    UpgradeRequired,
    /// 431.
    HeadTooLarge,
    /// 501.
    NotImplemented,
    /// 503.
    Unavailable,
    /// 505.
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        use Status::*;
        match self {
            Ok => 200,
            BadRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            LengthRequired => 411,
            PayloadTooLarge => 413,
            ExpectationFailed => 417,
            UpgradeRequired => 426,
            HeadTooLarge => 431,
            NotImplemented => 501,
            Unavailable => 503,
            VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "OK",
            BadRequest => "Bad Request",
            Unauthorized => "Unauthorized",
            Forbidden => "Forbidden",
            NotFound => "Not Found",
            MethodNotAllowed => "Method Not Allowed",
            RequestTimeout => "Request Timeout",
            LengthRequired => "Length Required",
            PayloadTooLarge => "Payload Too Large",
            ExpectationFailed => "Expectation Failed",
            UpgradeRequired => "Upgrade Required",
            HeadTooLarge => "Request Header Fields Too Large",
            NotImplemented => "Not Implemented",
            Unavailable => "Service Unavailable",
            VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// A request that cannot be served, with what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status to answer with.
    pub status: Status,
    /// What was wrong, for the JSON error body.
    pub message: String,
    /// Whether the connection must close after the answer, because the
    /// request's framing cannot be trusted to find the next one.
    pub fatal: bool,
}

impl HttpError {
    /// An error after which the connection cannot continue.
    pub fn fatal(status: Status, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), fatal: true }
    }

    /// An error in a well-framed request; the connection may go on.
    pub fn request(status: Status, message: impl Into<String>) -> HttpError {
        HttpError { status, message: message.into(), fatal: false }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.code(), self.message)
    }
}

impl std::error::Error for HttpError {}

/// Methods the router distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// POST.
    Post,
    /// Anything else.
    Other,
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the rest of the server needs from a request head. Parsed once so
/// that the input buffer can be reused while a body is still arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The path, without the query. The server's own paths are borrowed
    /// from constants, so routine requests allocate nothing for it.
    pub path: Cow<'static, str>,
    /// The query string, without the `?`.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// The body's framing.
    pub body: BodyFraming,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The headers a WebSocket upgrade needs, when it asked for one.
    pub upgrade: Option<Upgrade>,
    /// The `Accept` header, if any.
    pub accept: Option<Cow<'static, str>>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
}

/// The WebSocket handshake headers of an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`, if sent.
    pub key: Option<String>,
    /// `Sec-WebSocket-Version`, if sent.
    pub version: Option<String>,
}

/// Parses a request head from the front of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, and the head with its
/// length in bytes once it is complete.
pub fn parse_head(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(head_too_large(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::fatal(
                Status::HeadTooLarge,
                format!("request has more than {MAX_HEADERS} header lines"),
            ))
        }
        Err(e) => {
            return Err(HttpError::fatal(
                Status::BadRequest,
                format!("malformed request head: {e}"),
            ))
        }
    };
    if len > max_head {
        return Err(head_too_large(max_head));
    }
    let minor_version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method,
        path: intern(path, crate::router::PATHS),
        query: query.to_owned(),
        minor_version,
        keep_alive: minor_version >= 1,
        body: BodyFraming::None,
        expect_continue: false,
        upgrade: None,
        accept: None,
        authorization: None,
        origin: None,
    };
    read_headers(req.headers, &mut head)?;
    Ok(Some((head, len)))
}

/// Borrows `text` from `known` when it is one of them.
fn intern(text: &str, known: &[&'static str]) -> Cow<'static, str> {
    match known.iter().find(|k| **k == text) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(text.to_owned()),
    }
}

fn head_too_large(max_head: usize) -> HttpError {
    HttpError::fatal(
        Status::HeadTooLarge,
        format!("request head is larger than the {max_head}-byte limit"),
    )
}

fn read_headers(
    headers: &[httparse::Header<'_>],
    head: &mut Head,
) -> Result<(), HttpError> {
    let mut length: Option<usize> = None;
    // Transfer-Encoding lines combine into one list, as if comma-joined;
    // judging each line alone would let a later empty one hide `chunked`.
    let mut codings = Codings::default();
    let mut upgrade_token = false;
    let mut connection_upgrade = false;
    let (mut key, mut version) = (None, None);
    for h in headers {
        let value = std::str::from_utf8(h.value).map_err(|_| {
            HttpError::fatal(
                Status::BadRequest,
                format!("header {} is not UTF-8", h.name),
            )
        })?;
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value)?;
            if length.is_some_and(|old| old != n) {
                return Err(bad_framing("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.add(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_token |=
                tokens(value).any(|t| t.eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.trim().eq_ignore_ascii_case("100-continue") {
                return Err(HttpError::fatal(
                    Status::ExpectationFailed,
                    format!("unsupported Expect value {value:?}; only 100-continue is known"),
                ));
            }
            head.expect_continue = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("accept") {
            head.accept = Some(intern(value, &["*/*"]));
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_owned());
        }
    }
    let chunked = codings.is_chunked()?;
    if codings.present && length.is_some() {
        return Err(bad_framing(
            "request has both Content-Length and Transfer-Encoding",
        ));
    }
    // A length with any Transfer-Encoding was refused above.
    head.body = match length {
        _ if chunked => BodyFraming::Chunked,
        Some(0) | None => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
    };
    if head.minor_version == 0 && chunked {
        return Err(bad_framing("chunked encoding is not allowed in HTTP/1.0"));
    }
    if length.is_none() && !chunked && head.method == Method::Post {
        return Err(HttpError::fatal(
            Status::LengthRequired,
            "POST needs a Content-Length header or chunked Transfer-Encoding",
        ));
    }
    if upgrade_token && connection_upgrade {
        head.upgrade = Some(Upgrade { key, version });
    }
    Ok(())
}

fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn bad_framing(message: &str) -> HttpError {
    HttpError::fatal(Status::BadRequest, message)
}

fn parse_length(value: &str) -> Result<usize, HttpError> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_framing("Content-Length is not a number"));
    }
    // A length too big for usize is certainly over any body limit.
    Ok(value.parse().unwrap_or(usize::MAX))
}

/// The transfer codings of all `Transfer-Encoding` lines together.
#[derive(Debug, Default)]
struct Codings {
    present: bool,
    count: usize,
    only_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &str) {
        if !self.present {
            self.present = true;
            self.only_chunked = true;
        }
        for coding in tokens(value) {
            self.count += 1;
            self.only_chunked &= coding.eq_ignore_ascii_case("chunked");
        }
    }

    /// Whether the body is chunked; any other coding, or none listed, is
    /// refused.
    fn is_chunked(&self) -> Result<bool, HttpError> {
        match (self.present, self.count, self.only_chunked) {
            (false, _, _) => Ok(false),
            (true, 1, true) => Ok(true),
            (true, 0, _) => {
                Err(bad_framing("Transfer-Encoding names no coding"))
            }
            _ => Err(HttpError::fatal(
                Status::NotImplemented,
                "only a single chunked Transfer-Encoding is supported; send \
                 chunked or a Content-Length",
            )),
        }
    }
}

/// Longest chunk-size line, and most trailer bytes, accepted.
const MAX_CHUNK_LINE: usize = 8192;

/// Decodes a chunked body as its pieces arrive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, skipping trailer lines; holds how many
    /// trailer bytes were skipped so far.
    Trailers(usize),
    /// The body is complete.
    Done,
}

impl ChunkedDecoder {
    /// Decodes as much of `input` as possible into `body`, refusing bodies
    /// over `max_body` bytes. Returns how many input bytes were used; the
    /// body is complete once [`is_done`](Self::is_done) says so.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<usize, HttpError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                ChunkState::Done => return Ok(used),
                ChunkState::Size => {
                    let (n, size) = match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete(found)) => found,
                        // Extensions may make the line arbitrarily long;
                        // unbounded, a client could make the server hold and
                        // rescan megabytes for one line.
                        Ok(httparse::Status::Partial)
                            if rest.len() > MAX_CHUNK_LINE =>
                        {
                            return Err(bad_framing(
                                "chunk size line is too long",
                            ))
                        }
                        Ok(httparse::Status::Partial) => return Ok(used),
                        Err(_) => {
                            return Err(bad_framing(
                                "malformed chunk size line",
                            ))
                        }
                    };
                    used += n;
                    if size > (max_body - body.len()) as u64 {
                        return Err(body_too_large(max_body));
                    }
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let take = rest.len().min(left as usize);
                    body.extend_from_slice(&rest[..take]);
                    used += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => {
                        return Err(bad_framing(
                            "chunk data is not followed by CRLF",
                        ))
                    }
                },
                ChunkState::Trailers(skipped) => {
                    let line = rest.windows(2).position(|w| w == b"\r\n");
                    let seen = skipped + line.map_or(rest.len(), |end| end + 2);
                    if seen > MAX_CHUNK_LINE {
                        return Err(bad_framing(
                            "chunked trailers are too long",
                        ));
                    }
                    let Some(end) = line else { return Ok(used) };
                    used += end + 2;
                    self.state = if end == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Trailers(seen)
                    };
                }
            }
        }
    }

    /// Whether the last chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The error for a body over the limit.
pub fn body_too_large(max_body: usize) -> HttpError {
    HttpError::fatal(
        Status::PayloadTooLarge,
        format!("request body is larger than the {max_body}-byte limit"),
    )
}

/// Extra facts about an answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer<'a> {
    /// The `Content-Type`; JSON when `None`.
    pub content_type: Option<&'a str>,
    /// Additional header lines, each ending in CRLF.
    pub extra_headers: &'a str,
    /// Leave out the body (for HEAD), keeping its length.
    pub head_only: bool,
}

/// How the connection header of an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// HTTP/1.0 that asked to stay open.
    KeepAlive10,
    /// The connection closes after this answer.
    Close,
}

/// Appends a complete answer to `out`. `common` holds the header lines
/// every answer carries (see [`crate::security::Security`]).
pub fn write_answer(
    out: &mut Vec<u8>,
    status: Status,
    persistence: Persistence,
    answer: Answer<'_>,
    common: &str,
    body: &[u8],
) {
    write_head(out, status, persistence, answer, common, body.len());
    if !answer.head_only {
        out.extend_from_slice(body);
    }
}

/// Appends the status line and headers of an answer whose body of `len`
/// bytes the caller queues itself.
pub fn write_head(
    out: &mut Vec<u8>,
    status: Status,
    persistence: Persistence,
    answer: Answer<'_>,
    common: &str,
    len: usize,
) {
    let connection = match persistence {
        Persistence::KeepAlive => "",
        Persistence::KeepAlive10 => "Connection: keep-alive\r\n",
        Persistence::Close => "Connection: close\r\n",
    };
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}{}\r\n",
        status.code(),
        status.reason(),
        answer.content_type.unwrap_or("application/json"),
        len,
        common,
        connection,
        answer.extra_headers,
    );
}

/// Appends an error answer with its JSON body; `head_only` leaves the body
/// out (keeping its length) for a `HEAD` request.
pub fn write_error(
    out: &mut Vec<u8>,
    error: &HttpError,
    persistence: Persistence,
    extra_headers: &str,
    common: &str,
    head_only: bool,
) {
    let mut body = Vec::with_capacity(64 + error.message.len());
    wire::error_body(&error.message, &mut body);
    let answer = Answer { extra_headers, head_only, ..Answer::default() };
    write_answer(out, error.status, persistence, answer, common, &body);
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, HttpError> {
        parse_head(text.as_bytes(), 16 * 1024)
    }

    #[test]
    fn partial_heads_wait_for_more() {
        let full = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(head(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let (h, len) = head(full).unwrap().unwrap();
        assert_eq!(
            (h.method, &*h.path, len),
            (Method::Get, "/metrics", full.len())
        );
    }

    #[test]
    fn framing_headers_are_understood() {
        let (h, _) =
            head("POST /record?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((h.body, h.query.as_str()), (BodyFraming::Length(5), "x=1"));
        let (h, _) =
            head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        let both = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(both).unwrap_err().status, Status::BadRequest);
        let none = "POST / HTTP/1.1\r\n\r\n";
        assert_eq!(head(none).unwrap_err().status, Status::LengthRequired);
    }

    #[test]
    fn transfer_encoding_lines_combine_and_never_hide_behind_a_length() {
        let with = |lines: &str| {
            let text = format!("POST / HTTP/1.1\r\n{lines}\r\n");
            head(&text).map(|h| h.map(|(h, _)| h.body)).map_err(|e| e.status)
        };
        let smuggle = "Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\
                       Content-Length: 5\r\n";
        assert_eq!(with(smuggle), Err(Status::BadRequest));
        let empty = "Transfer-Encoding: ,\r\nContent-Length: 5\r\n";
        assert_eq!(with(empty), Err(Status::BadRequest));
        let twice =
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n";
        assert_eq!(with(twice), Err(Status::NotImplemented));
        let split = "Transfer-Encoding: \r\nTransfer-Encoding: Chunked\r\n";
        assert_eq!(with(split), Ok(Some(BodyFraming::Chunked)));
    }

    #[test]
    fn connection_tokens_are_case_insensitive_lists() {
        let text =
            "GET /dashboard HTTP/1.1\r\nconnection: keep-alive, UPGRADE\r\n\
                    upgrade: WebSocket\r\nSec-WebSocket-Key: abc\r\n\r\n";
        let (h, _) = head(text).unwrap().unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.upgrade.unwrap().key.as_deref(), Some("abc"));
        let (h, _) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        let err = parse_head(big.as_bytes(), 64).unwrap_err();
        assert_eq!((err.status, err.fatal), (Status::HeadTooLarge, true));
        let partial = "GET / HTTP/1.1\r\nX: ".to_string() + &"a".repeat(100);
        assert!(parse_head(partial.as_bytes(), 64).is_err());
    }

    #[test]
    fn chunked_bodies_decode_one_byte_at_a_time() {
        let input =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut fed = 0;
        while !decoder.is_done() {
            pending.push(input[fed]);
            fed += 1;
            let used = decoder.decode(&pending, &mut body, 100).unwrap();
            pending.drain(..used);
        }
        assert_eq!(body, b"Wikipedia");
        assert_eq!(&input[fed..], b"NEXT");
    }

    #[test]
    fn chunked_bodies_respect_the_limit_and_syntax() {
        let mut body = Vec::new();
        let err = ChunkedDecoder::default().decode(b"ff\r\n", &mut body, 10);
        assert_eq!(err.unwrap_err().status, Status::PayloadTooLarge);
        let err = ChunkedDecoder::default().decode(b"zz\r\n", &mut body, 10);
        assert_eq!(err.unwrap_err().status, Status::BadRequest);
        let err = ChunkedDecoder::default().decode(b"1\r\nab", &mut body, 10);
        assert_eq!(err.unwrap_err().status, Status::BadRequest);
        let endless = format!("1;{}", "a".repeat(9000));
        let err =
            ChunkedDecoder::default().decode(endless.as_bytes(), &mut body, 10);
        assert_eq!(err.unwrap_err().status, Status::BadRequest);
        let trailers = format!("0\r\n{}", "X-T: y\r\n".repeat(2000));
        let err = ChunkedDecoder::default().decode(
            trailers.as_bytes(),
            &mut body,
            10,
        );
        assert_eq!(err.unwrap_err().status, Status::BadRequest);
    }
}
