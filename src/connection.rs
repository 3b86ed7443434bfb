//! One HTTP/1.x connection: reading requests, answering them in order, and
//! handing the socket over when a request upgrades to a dashboard.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::app::App;
use crate::http::{
    self, BodyFraming, ChunkedDecoder, Head, HttpError, Method, Persistence,
    Status,
};
use crate::output::Output;
use crate::router::{self, Routed};

/// Output above which the connection stops reading new requests until the
/// client has taken its answers, so a client that pipelines without reading
/// cannot make the server buffer without bound.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Most bytes read from one connection per turn, so that a client sending
/// without pause cannot keep the loop from everyone else.
const READ_BUDGET: usize = 256 * 1024;
/// How long a closing connection waits for the client to hang up after the
/// last answer, so that unread input does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);

/// The HTTP limits a connection enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_head: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Time a started request has to arrive.
    pub request_timeout: Duration,
    /// Time an idle connection is kept.
    pub idle_timeout: Duration,
}

/// Where a connection is in its life.
// The parsed head is kept inline: boxing it would cost an allocation for
// every request with a body, and a few hundred bytes per connection is
// cheap next to its buffers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Phase {
    /// Between requests, nothing received.
    Idle,
    /// Part of a request head has arrived.
    Head { since: Instant },
    /// The head is parsed; the body is arriving.
    Body { head: Head, since: Instant, body: BodyProgress, continued: bool },
    /// The last answer is owed; the connection closes once it is written.
    Finishing,
    /// Everything is written and our side is shut; waiting for the client to
    /// hang up, discarding what it still sends.
    Lingering { until: Instant },
}

#[derive(Debug)]
enum BodyProgress {
    Length(usize),
    Chunked(ChunkedDecoder),
}

/// What the reactor should do with the connection next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it.
    Open,
    /// Close it.
    Close,
    /// Turn it into a dashboard ([`HttpConn::into_upgrade`]).
    Upgrade,
    /// Keep it and serve it again next turn: it stopped with input left,
    /// for fairness or because its answers backed up and have since gone.
    Again,
}

/// The parts of an upgraded connection a dashboard is built from.
#[derive(Debug)]
pub struct UpgradeParts {
    /// The socket.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Bytes received after the upgrade request.
    pub input: Vec<u8>,
    /// Answers not yet written, ending with the `101`.
    pub output: Vec<u8>,
}

/// An HTTP connection.
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    input: Vec<u8>,
    output: Output,
    chunked_body: Vec<u8>,
    last_active: Instant,
    /// Stop after the current request: the server is shutting down.
    last_request: bool,
    /// The client has shut its side.
    eof: bool,
}

impl HttpConn {
    /// Wraps a freshly accepted socket.
    pub fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            peer,
            phase: Phase::Idle,
            input: Vec::new(),
            output: Output::default(),
            chunked_body: Vec::new(),
            last_active: now,
            last_request: false,
            eof: false,
        }
    }

    /// Wraps a socket that is only to be told `answer` and closed, as when
    /// the server is at its connection limit.
    pub fn refused(
        stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
        answer: &[u8],
    ) -> HttpConn {
        let mut conn = HttpConn::new(stream, peer, now);
        conn.output.buf().extend_from_slice(answer);
        conn.phase = Phase::Finishing;
        conn
    }

    /// The socket, for registration with the reactor.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Handles readiness: reads and answers what arrived, then writes.
    ///
    /// `hung_up` says the event reported the client's side closed, so
    /// reading must go on until end of file is seen.
    pub fn on_ready(
        &mut self,
        app: &mut App,
        limits: &Limits,
        now: Instant,
        scratch: &mut [u8],
        hung_up: bool,
    ) -> Outcome {
        let outcome =
            match self.read_requests(app, limits, now, scratch, hung_up) {
                Ok(outcome) => outcome,
                Err(e) => {
                    log::debug!("http {}: read failed: {e}", self.peer);
                    return Outcome::Close;
                }
            };
        if outcome == Outcome::Upgrade {
            return outcome;
        }
        match self.write(app, now) {
            Outcome::Open
                if outcome == Outcome::Again && self.output.is_empty() =>
            {
                Outcome::Again
            }
            written => written,
        }
    }

    /// Reads until the socket is empty or enough answers are waiting,
    /// answering each complete request as it is found.
    fn read_requests(
        &mut self,
        app: &mut App,
        limits: &Limits,
        now: Instant,
        scratch: &mut [u8],
        hung_up: bool,
    ) -> io::Result<Outcome> {
        // Requests left over when the output backed up come first.
        if !self.input.is_empty()
            && self.answer_requests(app, limits, now) == Routed::Upgrade
        {
            return Ok(Outcome::Upgrade);
        }
        let mut read = 0;
        while !self.eof {
            // Either stop leaves input in the socket or the buffer that no
            // new readiness event will announce.
            if self.backed_up() || read >= READ_BUDGET {
                return Ok(Outcome::Again);
            }
            let n = match self.stream.read(scratch) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            read += n;
            self.last_active = now;
            if matches!(self.phase, Phase::Finishing | Phase::Lingering { .. })
            {
                continue;
            }
            self.input.extend_from_slice(&scratch[..n]);
            if self.answer_requests(app, limits, now) == Routed::Upgrade {
                return Ok(Outcome::Upgrade);
            }
            // A short read emptied the socket; more data will raise a new
            // edge, so the read that would only say WouldBlock is skipped.
            if n < scratch.len() && !hung_up {
                break;
            }
        }
        // Answering stops when the output backs up, leaving requests in
        // the buffer that only another turn will reach.
        Ok(if self.backed_up() { Outcome::Again } else { Outcome::Open })
    }

    /// Whether enough answers wait that reading should pause.
    fn backed_up(&self) -> bool {
        self.output.pending() >= OUTPUT_HIGH_WATER
    }

    /// Answers the complete requests in the input buffer, pausing when the
    /// output backs up.
    fn answer_requests(
        &mut self,
        app: &mut App,
        limits: &Limits,
        now: Instant,
    ) -> Routed {
        let mut used = 0;
        let routed = loop {
            if self.backed_up() {
                break Routed::Answered;
            }
            match self.next_request(&mut used, app, limits, now) {
                Ok(Some(Routed::Upgrade)) => break Routed::Upgrade,
                Ok(Some(Routed::Answered)) => continue,
                Ok(None) => break Routed::Answered,
                Err(error) => {
                    log::debug!("http {}: refused request: {error}", self.peer);
                    self.fail(app, &error);
                    break Routed::Answered;
                }
            }
        };
        self.input.drain(..used);
        routed
    }

    /// Advances the request at `input[*used..]` as far as the buffered
    /// bytes allow; answers it once complete.
    fn next_request(
        &mut self,
        used: &mut usize,
        app: &mut App,
        limits: &Limits,
        now: Instant,
    ) -> Result<Option<Routed>, HttpError> {
        let pending = &self.input[*used..];
        match &mut self.phase {
            Phase::Idle | Phase::Head { .. } if pending.is_empty() => Ok(None),
            Phase::Idle | Phase::Head { .. } => {
                let since = match self.phase {
                    Phase::Head { since } => since,
                    _ => now,
                };
                let Some((head, len)) =
                    http::parse_head(pending, limits.max_head)?
                else {
                    self.phase = Phase::Head { since };
                    return Ok(None);
                };
                *used += len;
                let body = match head.body {
                    BodyFraming::None => {
                        self.phase = Phase::Idle;
                        return Ok(Some(self.answer(
                            app,
                            &head,
                            BodyRef::Input(0, 0),
                        )));
                    }
                    BodyFraming::Length(n) if n > limits.max_body => {
                        return Err(http::body_too_large(limits.max_body));
                    }
                    BodyFraming::Length(n) => BodyProgress::Length(n),
                    BodyFraming::Chunked => {
                        BodyProgress::Chunked(ChunkedDecoder::default())
                    }
                };
                self.chunked_body.clear();
                self.phase =
                    Phase::Body { head, since, body, continued: false };
                self.next_request(used, app, limits, now)
            }
            Phase::Body { body, continued, head, .. } => {
                let complete = match body {
                    BodyProgress::Length(n) if pending.len() >= *n => {
                        let at = *used;
                        *used += *n;
                        Some(BodyRef::Input(at, *n))
                    }
                    BodyProgress::Length(_) => None,
                    BodyProgress::Chunked(decoder) => {
                        *used += decoder.decode(
                            pending,
                            &mut self.chunked_body,
                            limits.max_body,
                        )?;
                        decoder.is_done().then_some(BodyRef::Chunked)
                    }
                };
                let Some(body) = complete else {
                    if head.expect_continue && !*continued && pending.is_empty()
                    {
                        self.output.buf().extend_from_slice(http::CONTINUE);
                        *continued = true;
                    }
                    return Ok(None);
                };
                let Phase::Body { head, .. } =
                    std::mem::replace(&mut self.phase, Phase::Idle)
                else {
                    unreachable!("phase was just matched as Body");
                };
                Ok(Some(self.answer(app, &head, body)))
            }
            Phase::Finishing | Phase::Lingering { .. } => {
                *used = self.input.len();
                Ok(None)
            }
        }
    }

    /// Routes a complete request and queues its answer.
    fn answer(&mut self, app: &mut App, head: &Head, body: BodyRef) -> Routed {
        let body = match body {
            BodyRef::Input(at, len) => &self.input[at..at + len],
            BodyRef::Chunked => &self.chunked_body[..],
        };
        let persistence = if !head.keep_alive || self.last_request {
            Persistence::Close
        } else if head.minor_version == 0 {
            Persistence::KeepAlive10
        } else {
            Persistence::KeepAlive
        };
        let routed =
            router::route(app, head, body, persistence, &mut self.output);
        if routed == Routed::Answered && persistence == Persistence::Close {
            self.phase = Phase::Finishing;
        }
        routed
    }

    /// Queues an error answer after which the connection closes when the
    /// error says the framing is lost.
    fn fail(&mut self, app: &mut App, error: &HttpError) {
        let persistence = if error.fatal {
            Persistence::Close
        } else {
            Persistence::KeepAlive
        };
        let route = match &self.phase {
            Phase::Body { head, .. } => router::route_label(&head.path),
            _ => "other",
        };
        app.stats.answered(route, error.status.code());
        let common = &app.security.headers;
        let head_only = match &self.phase {
            Phase::Body { head, .. } => head.method == Method::Head,
            _ => false,
        };
        let out = self.output.buf();
        http::write_error(out, error, persistence, "", common, head_only);
        if error.fatal {
            self.phase = Phase::Finishing;
        } else {
            self.phase = Phase::Idle;
        }
    }

    /// Writes queued answers; closes or lingers once the last is out.
    fn write(&mut self, app: &mut App, now: Instant) -> Outcome {
        while !self.output.is_empty() {
            match self.output.write_to(&mut self.stream) {
                Ok(0) => return Outcome::Close,
                Ok(n) => {
                    self.last_active = now;
                    app.stats.http_bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Outcome::Open;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("http {}: write failed: {e}", self.peer);
                    return Outcome::Close;
                }
            }
        }
        match self.phase {
            // Nothing more can arrive, and nothing more is owed.
            _ if self.eof => Outcome::Close,
            Phase::Finishing => {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.phase = Phase::Lingering { until: now + LINGER };
                Outcome::Open
            }
            Phase::Idle if self.last_request => Outcome::Close,
            _ => Outcome::Open,
        }
    }

    /// When the connection next needs attention if nothing happens.
    pub fn deadline(&self, limits: &Limits) -> Instant {
        match self.phase {
            Phase::Head { since } | Phase::Body { since, .. } => {
                since + limits.request_timeout
            }
            Phase::Lingering { until } => until,
            Phase::Idle | Phase::Finishing => {
                self.last_active + limits.idle_timeout
            }
        }
    }

    /// Handles a passed deadline.
    pub fn on_timeout(
        &mut self,
        app: &mut App,
        limits: &Limits,
        now: Instant,
    ) -> Outcome {
        if self.deadline(limits) > now {
            return Outcome::Open;
        }
        match self.phase {
            Phase::Head { .. } | Phase::Body { .. } => {
                log::debug!("http {}: request timed out", self.peer);
                let secs = limits.request_timeout.as_secs_f64();
                let error = HttpError::fatal(
                    Status::RequestTimeout,
                    format!("the request did not arrive within {secs} s"),
                );
                self.fail(app, &error);
                self.write(app, now)
            }
            Phase::Idle | Phase::Finishing | Phase::Lingering { .. } => {
                Outcome::Close
            }
        }
    }

    /// The server is stopping: answer what was received, then close.
    pub fn begin_shutdown(&mut self, app: &mut App, now: Instant) -> Outcome {
        self.last_request = true;
        match self.phase {
            Phase::Idle if self.output.is_empty() => Outcome::Close,
            _ => self.write(app, now),
        }
    }

    /// Gives up the socket and buffers to become a dashboard.
    pub fn into_upgrade(self) -> UpgradeParts {
        UpgradeParts {
            stream: self.stream,
            peer: self.peer,
            input: self.input,
            output: self.output.into_vec(),
        }
    }
}

/// Where a complete body is.
#[derive(Debug, Clone, Copy)]
enum BodyRef {
    /// In the input buffer, at this offset and length.
    Input(usize, usize),
    /// In the chunked-body buffer.
    Chunked,
}
