//! One `/dashboard` WebSocket: tungstenite reads the client's frames and
//! answers its pings and close; broadcast frames go straight from the shared
//! feed to the socket.
//!
//! Two writers share one socket, so they take turns at frame boundaries:
//! while a feed frame is half written, [`WsStream`] tells tungstenite the
//! socket would block, and our own bytes wait until tungstenite has flushed
//! what it queued.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::app::App;
use crate::connection::UpgradeParts;
use crate::hub::Subscriber;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most bytes written to one dashboard per loop turn, so that one client
/// catching up on a large backlog cannot starve the others.
const WRITE_BUDGET: usize = 256 * 1024;

/// The socket as tungstenite sees it.
#[derive(Debug)]
pub struct WsStream {
    tcp: TcpStream,
    /// A feed frame is half written: tungstenite must not write now.
    hold: bool,
    /// Bytes arrived since the last look.
    heard: bool,
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.heard |= n > 0;
        Ok(n)
    }
}

impl Write for WsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.hold {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a dashboard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving updates.
    Open,
    /// A close frame was sent or received; waiting for the handshake to end.
    Closing { until: Instant },
}

/// What the reactor should do with the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it.
    Open,
    /// Drop it.
    Close,
}

/// A connected dashboard.
#[derive(Debug)]
pub struct Dashboard {
    ws: WebSocket<WsStream>,
    peer: SocketAddr,
    sub: Subscriber,
    phase: Phase,
    last_heard: Instant,
    /// The last write hit a full socket; wait for it to become writable.
    blocked: bool,
    /// Times this dashboard fell too far behind.
    resyncs: u32,
}

fn socket_config() -> WebSocketConfig {
    // Dashboards only send control frames, so tiny buffers suffice and keep
    // ten thousand idle dashboards cheap.
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(4096)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

impl Dashboard {
    /// Takes over an upgraded HTTP connection. The `101` answer and any
    /// answers before it go out first, then the snapshot.
    pub fn accept(
        parts: UpgradeParts,
        app: &mut App,
        now: Instant,
    ) -> Dashboard {
        let sub = Subscriber::join(&mut app.feed, parts.output);
        // Until the 101 answer is out, tungstenite must not write: a pong
        // for a ping that came with the upgrade would otherwise precede it.
        let hold = sub.holds_socket(&app.feed);
        let stream = WsStream { tcp: parts.stream, hold, heard: false };
        let ws = WebSocket::from_partially_read(
            stream,
            parts.input,
            Role::Server,
            Some(socket_config()),
        );
        log::debug!("dashboard {}: connected", parts.peer);
        Dashboard {
            ws,
            peer: parts.peer,
            sub,
            phase: Phase::Open,
            last_heard: now,
            blocked: false,
            resyncs: 0,
        }
    }

    /// Handles readiness.
    pub fn on_ready(
        &mut self,
        app: &mut App,
        now: Instant,
        writable: bool,
    ) -> Outcome {
        if writable {
            self.blocked = false;
        }
        if self.read(app, now) == Outcome::Close {
            return Outcome::Close;
        }
        self.write(app)
    }

    /// Reads and handles everything the client sent.
    fn read(&mut self, app: &mut App, now: Instant) -> Outcome {
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) => {
                    log::debug!("dashboard {}: client closed", self.peer);
                    self.sub.stop_following(&mut app.feed);
                    self.phase = Phase::Closing { until: now + CLOSE_GRACE };
                }
                // Text, binary and pongs from clients carry nothing we use.
                Ok(_) => {}
                Err(WsError::Io(e))
                    if e.kind() == io::ErrorKind::WouldBlock =>
                {
                    break
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Outcome::Close
                }
                Err(e) => {
                    log::debug!("dashboard {}: dropped: {e}", self.peer);
                    return Outcome::Close;
                }
            }
        }
        if std::mem::take(&mut self.ws.get_mut().heard) {
            self.last_heard = now;
        }
        Outcome::Open
    }

    /// Writes what is owed: first tungstenite's control frames when no feed
    /// frame is half written, then snapshot and feed bytes in one `writev`.
    pub fn write(&mut self, app: &mut App) -> Outcome {
        let mut budget = WRITE_BUDGET;
        while !self.blocked && budget > 0 {
            if !self.sub.holds_socket(&app.feed) {
                self.ws.get_mut().hold = false;
                match self.ws.flush() {
                    Ok(()) => {}
                    Err(WsError::Io(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        self.blocked = true;
                        break;
                    }
                    Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                        return Outcome::Close
                    }
                    Err(e) => {
                        log::debug!(
                            "dashboard {}: write failed: {e}",
                            self.peer
                        );
                        return Outcome::Close;
                    }
                }
            }
            match self.write_feed(app, budget) {
                Ok(0) => break,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("dashboard {}: write failed: {e}", self.peer);
                    return Outcome::Close;
                }
            }
        }
        self.ws.get_mut().hold = self.sub.holds_socket(&app.feed);
        Outcome::Open
    }

    /// One vectored write of owed bytes; returns how many went out.
    fn write_feed(
        &mut self,
        app: &mut App,
        budget: usize,
    ) -> io::Result<usize> {
        let App { feed, store, stats, .. } = app;
        let mut slices = [IoSlice::new(&[]); 3];
        let count = self.sub.next_slices(
            feed,
            || store.snapshot_frame(),
            budget,
            &mut slices,
        );
        if count == 0 {
            return Ok(0);
        }
        let n = self.ws.get_mut().tcp.write_vectored(&slices[..count])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        stats.frames_sent += self.sub.advance(feed, n);
        stats.dashboard_writes += 1;
        stats.dashboard_bytes += n as u64;
        Ok(n)
    }

    /// Whether the dashboard has output it could write now.
    pub fn wants_write(&self, app: &App) -> bool {
        !self.blocked && self.sub.has_output(&app.feed)
    }

    /// Resyncs the dashboard if it lags more than `max_lag` bytes.
    pub fn check_lag(&mut self, app: &mut App, max_lag: usize) {
        let Some(dropped) = self.sub.check_lag(&app.feed, max_lag as u64)
        else {
            return;
        };
        app.stats.resyncs += 1;
        app.stats.frames_dropped += dropped.frames;
        self.resyncs += 1;
        // A client that keeps lagging would fill the log; the first time
        // is a warning, the rest are counted in the metrics.
        let level = if self.resyncs == 1 {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "dashboard {}: fell {} bytes behind (limit {max_lag}); dropped \
             its queued updates, a fresh snapshot follows (resync {})",
            self.peer,
            dropped.bytes,
            self.resyncs
        );
    }

    /// The oldest feed offset this dashboard still needs.
    pub fn needs_from(&self) -> Option<u64> {
        self.sub.needs_from()
    }

    /// Starts the closing handshake with `code`.
    pub fn begin_close(
        &mut self,
        app: &mut App,
        code: CloseCode,
        now: Instant,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        self.sub.stop_following(&mut app.feed);
        self.ws.get_mut().hold = self.sub.holds_socket(&app.feed);
        let frame = CloseFrame { code, reason: "server shutting down".into() };
        // The close frame is queued even when the socket cannot take it
        // now; `write` sends it once the current frame is complete.
        let _ = self.ws.close(Some(frame));
        self.phase = Phase::Closing { until: now + CLOSE_GRACE };
    }

    /// When the dashboard next needs attention: the end of its closing
    /// grace, or the moment it has been silent for two keepalives.
    pub fn deadline(&self, keepalive: Duration) -> Instant {
        match self.phase {
            Phase::Open => self.last_heard + 2 * keepalive,
            Phase::Closing { until } => until,
        }
    }

    /// Handles a passed deadline.
    pub fn on_timeout(&mut self, keepalive: Duration, now: Instant) -> Outcome {
        if self.deadline(keepalive) > now {
            return Outcome::Open;
        }
        if self.phase == Phase::Open {
            let silent = now.duration_since(self.last_heard).as_secs_f64();
            log::debug!(
                "dashboard {}: silent for {silent:.1} s, closing",
                self.peer
            );
        }
        Outcome::Close
    }

    /// Leaves the feed; called when the dashboard is dropped.
    pub fn leave(&mut self, app: &mut App) {
        self.sub.leave(&mut app.feed);
        log::debug!("dashboard {}: disconnected", self.peer);
    }
}
