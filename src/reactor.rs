//! The event loop: one `mio::Poll` that owns the listener, every
//! connection, the timers and the application state.
//!
//! Each turn runs the same steps: wait for readiness or the next deadline,
//! dispatch events, fire due timers, write to dashboards, and drop the
//! connections that finished. Nothing outside this module sees a token.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::app::App;
use crate::config::Config;
use crate::connection::{self, HttpConn, Limits};
use crate::dashboard::{self, Dashboard};
use crate::http::{self, HttpError, Persistence, Status};
use crate::security::Security;
use crate::store::Store;
use crate::timer::{TimerId, Timers};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Connection tokens start here; below are the fixed ones.
const FIRST_CONNECTION: usize = 2;
/// How long a stopping server waits for owed answers and close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest the dashboard flush window grows to when writing to many
/// dashboards takes long.
const MAX_FLUSH_WINDOW: Duration = Duration::from_millis(25);
/// Pause before accepting again after running out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

fn token(key: usize) -> Token {
    Token(key + FIRST_CONNECTION)
}

fn key(token: Token) -> usize {
    token.0 - FIRST_CONNECTION
}

/// A connection in the slab.
#[derive(Debug)]
enum Connection {
    /// Speaking HTTP.
    Http(HttpConn),
    /// Upgraded to a WebSocket dashboard.
    Dashboard(Dashboard),
    /// Finished; removed at the end of the turn.
    Closed,
}

#[derive(Debug)]
struct Slot {
    conn: Connection,
    /// Tells this connection's timers from those of an earlier occupant of
    /// the same slab key.
    serial: u64,
    /// The earliest deadline queued for this connection.
    armed: Option<Instant>,
}

/// Whether the server is serving or stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Stopping { until: Instant },
}

/// The server.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: UnixStream,
    conns: Slab<Slot>,
    timers: Timers,
    app: App,
    config: Config,
    limits: Limits,
    state: RunState,
    next_serial: u64,
    scratch: Box<[u8]>,
    to_close: Vec<usize>,
    /// HTTP connections with input left over that must be served again.
    again: Vec<usize>,
    /// Feed head at the last dashboard write pass.
    flushed_head: u64,
    /// When gathered broadcasts are next written to dashboards.
    flush_due: Option<Instant>,
    /// How long broadcasts gather before they are written.
    flush_window: Duration,
    /// A dashboard still has writable output, or dashboards came or went.
    dashboards_dirty: bool,
    refusal_503: Vec<u8>,
    /// Accepting failed and is being retried.
    accept_failing: bool,
}

impl Reactor {
    /// Binds the listener and prepares the loop. `signals` is the read end
    /// of the pipe that signal handlers write to.
    pub fn bind(config: Config, signals: UnixStream) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        // mio listens with a queue of 128; a crowd of dashboards
        // reconnecting after a restart overflows that, and each dropped
        // handshake costs its client a one-second retry. Listening again
        // raises the queue to the kernel's maximum.
        if unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut signals = signals;
        poll.registry().register(
            &mut listener,
            LISTENER,
            Interest::READABLE,
        )?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let limits = Limits {
            max_head: config.max_head_bytes,
            max_body: config.max_body_bytes,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
        };
        let security = Security::from_config(&config);
        let flush_window = config.dashboard_flush;
        let mut refusal_503 = Vec::new();
        let error = HttpError::fatal(
            Status::Unavailable,
            format!(
                "the server is at its limit of {} connections; retry shortly",
                config.max_connections
            ),
        );
        http::write_error(
            &mut refusal_503,
            &error,
            Persistence::Close,
            "Retry-After: 1\r\n",
            &security.headers,
            false,
        );
        let mut timers = Timers::default();
        timers.push(Instant::now() + config.keepalive, TimerId::Keepalive);
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            timers,
            app: App::new(
                Store::new(config.metadata_limit, config.max_metrics),
                security,
            ),
            config,
            limits,
            state: RunState::Running,
            next_serial: 0,
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            to_close: Vec::new(),
            again: Vec::new(),
            flushed_head: 0,
            flush_due: None,
            flush_window,
            dashboards_dirty: false,
            refusal_503,
            accept_failing: false,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Runs until a stop signal has been handled.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for key in std::mem::take(&mut self.again) {
                self.serve(key, now, false, false);
            }
            for event in events.iter() {
                self.dispatch(event, now);
            }
            self.fire_timers(now);
            self.write_dashboards(now);
            self.reap();
            if let RunState::Stopping { until } = self.state {
                if self.conns.is_empty() {
                    return Ok(());
                }
                if now >= until {
                    log::warn!(
                        "{} connections still open after the shutdown grace period; \
                         closing them",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.dashboards_dirty || !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = self.timers.next();
        if let Some(due) = self.flush_due {
            next = Some(next.map_or(due, |t| t.min(due)));
        }
        if let RunState::Stopping { until } = self.state {
            next = Some(next.map_or(until, |t| t.min(until)));
        }
        // Round up so that a deadline is never woken for a moment early.
        next.map(|at| {
            at.saturating_duration_since(now) + Duration::from_millis(1)
        })
    }

    fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        match event.token() {
            LISTENER => self.accept(now),
            SIGNALS => self.on_signal(now),
            token => self.on_connection(key(token), event, now),
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept_failing = false;
                    self.admit(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Usually out of file descriptors. Connections stay in
                    // the kernel's backlog; try again shortly.
                    // Logged once per episode: the retry below would
                    // otherwise repeat the line ten times a second.
                    let level = if self.accept_failing {
                        log::Level::Debug
                    } else {
                        log::Level::Error
                    };
                    log::log!(
                        level,
                        "accept failed: {e}; retrying every {ACCEPT_RETRY:?}"
                    );
                    self.accept_failing = true;
                    self.timers.push(now + ACCEPT_RETRY, TimerId::Accept);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let max = self.config.max_connections;
        let conn = if self.conns.len() < max {
            log::debug!("http {peer}: connected");
            HttpConn::new(stream, peer, now)
        } else if self.conns.len() < max + max / 8 + 8 {
            // Kept just long enough to deliver the 503 and close politely;
            // closing at once could reset the answer away.
            log::debug!(
                "http {peer}: refused, at the limit of {max} connections"
            );
            self.app.stats.answered("other", 503);
            HttpConn::refused(stream, peer, now, &self.refusal_503)
        } else {
            self.app.stats.answered("other", 503);
            let _ = stream.write(&self.refusal_503);
            return;
        };
        self.insert(conn);
    }

    fn insert(&mut self, mut conn: HttpConn) {
        let peer = conn.peer();
        let stream = conn.stream();
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let interest = Interest::READABLE | Interest::WRITABLE;
        // Registered once for both directions: with edge triggering a
        // writable edge only comes after a write has filled the socket, so
        // there is nothing to re-register per request.
        let registered =
            self.poll.registry().register(stream, token(entry.key()), interest);
        if let Err(e) = registered {
            log::error!("could not register {peer}: {e}");
            return;
        }
        self.next_serial += 1;
        self.app.stats.open_http += 1;
        let key = entry.key();
        entry.insert(Slot {
            conn: Connection::Http(conn),
            serial: self.next_serial,
            armed: None,
        });
        self.arm(key);
    }

    fn on_signal(&mut self, now: Instant) {
        let mut drained = [0u8; 64];
        while matches!(self.signals.read(&mut drained), Ok(n) if n > 0) {}
        match self.state {
            RunState::Running => self.begin_shutdown(now),
            RunState::Stopping { .. } => {
                log::warn!("second stop signal: exiting now");
                self.state = RunState::Stopping { until: now };
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        log::info!("stopping: closing {} connections", self.conns.len());
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.state = RunState::Stopping { until: now + SHUTDOWN_GRACE };
        for (key, slot) in self.conns.iter_mut() {
            let outcome = match &mut slot.conn {
                Connection::Http(http) => {
                    http.begin_shutdown(&mut self.app, now)
                }
                Connection::Dashboard(dash) => {
                    dash.begin_close(&mut self.app, CloseCode::Away, now);
                    connection::Outcome::Open
                }
                Connection::Closed => continue,
            };
            if outcome == connection::Outcome::Close {
                self.to_close.push(key);
            }
        }
        // Closing shortened every dashboard's deadline to its close grace;
        // queue that, or a peer that never answers would hold the exit
        // until the whole shutdown grace.
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.arm(key);
        }
        self.dashboards_dirty = true;
    }

    fn on_connection(
        &mut self,
        key: usize,
        event: &mio::event::Event,
        now: Instant,
    ) {
        let hung_up = event.is_read_closed() || event.is_error();
        self.serve(key, now, hung_up, event.is_writable());
    }

    /// Lets a connection read and write what it can.
    fn serve(
        &mut self,
        key: usize,
        now: Instant,
        hung_up: bool,
        writable: bool,
    ) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        let closed = match &mut slot.conn {
            Connection::Http(http) => {
                match http.on_ready(
                    &mut self.app,
                    &self.limits,
                    now,
                    &mut self.scratch,
                    hung_up,
                ) {
                    connection::Outcome::Open => false,
                    connection::Outcome::Again => {
                        // Input is left that no readiness event will
                        // announce; it is served next turn, after the others.
                        self.again.push(key);
                        false
                    }
                    connection::Outcome::Close => true,
                    connection::Outcome::Upgrade => self.upgrade(key, now),
                }
            }
            Connection::Dashboard(dash) => {
                let outcome = dash.on_ready(&mut self.app, now, writable);
                // A write stopped by its budget, not by a full socket, gets
                // no new event; the next turn's pass must continue it.
                self.dashboards_dirty |= dash.wants_write(&self.app);
                outcome == dashboard::Outcome::Close
            }
            Connection::Closed => return,
        };
        if closed {
            self.close(key);
        } else {
            self.arm(key);
        }
    }

    /// Turns an HTTP connection into a dashboard; returns whether it
    /// closed at once.
    fn upgrade(&mut self, key: usize, now: Instant) -> bool {
        let slot = &mut self.conns[key];
        let Connection::Http(http) =
            std::mem::replace(&mut slot.conn, Connection::Closed)
        else {
            return true;
        };
        let mut dash =
            Dashboard::accept(http.into_upgrade(), &mut self.app, now);
        self.app.stats.open_http -= 1;
        self.app.stats.open_dashboards += 1;
        // Frames that came in the same packets as the upgrade request are
        // already off the socket, so no readiness event will announce them.
        let outcome = dash.on_ready(&mut self.app, now, false);
        self.dashboards_dirty = true;
        slot.conn = Connection::Dashboard(dash);
        outcome == dashboard::Outcome::Close
    }

    /// Queues the connection's next deadline unless an earlier one is queued.
    fn arm(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        let deadline = match &slot.conn {
            Connection::Http(http) => http.deadline(&self.limits),
            Connection::Dashboard(dash) => dash.deadline(self.config.keepalive),
            Connection::Closed => return,
        };
        if slot.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        slot.armed = Some(deadline);
        self.timers
            .push(deadline, TimerId::Connection { key, serial: slot.serial });
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(id) = self.timers.pop_due(now) {
            match id {
                TimerId::Keepalive => {
                    self.app.keepalive();
                    self.timers
                        .push(now + self.config.keepalive, TimerId::Keepalive);
                }
                TimerId::Accept => self.accept(now),
                TimerId::Connection { key, serial } => {
                    self.on_deadline(key, serial, now)
                }
            }
        }
    }

    fn on_deadline(&mut self, key: usize, serial: u64, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else { return };
        if slot.serial != serial {
            return;
        }
        slot.armed = None;
        let closed = match &mut slot.conn {
            Connection::Http(http) => {
                http.on_timeout(&mut self.app, &self.limits, now)
                    == connection::Outcome::Close
            }
            Connection::Dashboard(dash) => {
                dash.on_timeout(self.config.keepalive, now)
                    == dashboard::Outcome::Close
            }
            Connection::Closed => return,
        };
        if closed {
            self.close(key);
        } else {
            self.arm(key);
        }
    }

    /// Gives every dashboard its write, resyncs the ones that fell too far
    /// behind and trims the feed.
    ///
    /// Broadcasts gather for the flush window first: one write per
    /// dashboard is a system call whatever it carries, so a few
    /// milliseconds of gathering divide the cost of a fan-out by the
    /// number of updates it catches. The window widens to the time the
    /// last pass took, so that with very many dashboards writing cannot
    /// take more than about half of the loop. A window of zero turns all
    /// of this off: every turn writes what it has.
    fn write_dashboards(&mut self, now: Instant) {
        let head = self.app.feed.head();
        if head != self.flushed_head && self.flush_due.is_none() {
            self.flush_due = Some(now + self.flush_window);
        }
        let due = self.flush_due.is_some_and(|at| at <= now);
        if !due && !self.dashboards_dirty {
            return;
        }
        if due {
            self.flush_due = None;
        }
        self.flushed_head = head;
        self.dashboards_dirty = false;
        let started = Instant::now();
        let mut oldest = head;
        for (key, slot) in self.conns.iter_mut() {
            let Connection::Dashboard(dash) = &mut slot.conn else { continue };
            dash.check_lag(&mut self.app, self.config.max_dashboard_lag);
            if dash.write(&mut self.app) == dashboard::Outcome::Close {
                self.to_close.push(key);
                continue;
            }
            self.dashboards_dirty |= dash.wants_write(&self.app);
            if let Some(from) = dash.needs_from() {
                oldest = oldest.min(from);
            }
        }
        self.app.feed.trim(oldest);
        let took = started.elapsed();
        let configured = self.config.dashboard_flush;
        if !configured.is_zero() {
            self.flush_window = configured.max(took.min(MAX_FLUSH_WINDOW));
        }
    }

    fn close(&mut self, key: usize) {
        self.to_close.push(key);
    }

    /// Drops the connections marked closed this turn.
    fn reap(&mut self) {
        if self.to_close.is_empty() {
            return;
        }
        for key in self.to_close.drain(..) {
            let Some(slot) = self.conns.try_remove(key) else { continue };
            match slot.conn {
                Connection::Http(http) => {
                    self.app.stats.open_http -= 1;
                    log::debug!("http {}: closed", http.peer());
                }
                Connection::Dashboard(mut dash) => {
                    self.app.stats.open_dashboards -= 1;
                    dash.leave(&mut self.app);
                    self.dashboards_dirty = true;
                }
                Connection::Closed => {}
            }
            // Dropping the socket closes it, which also removes it from
            // the poll set.
        }
        if self.timers.len() > 4 * self.conns.len() + 4096 {
            let conns = &self.conns;
            self.timers.retain(|id| match id {
                TimerId::Connection { key, serial } => {
                    conns.get(key).is_some_and(|slot| slot.serial == serial)
                }
                _ => true,
            });
        }
    }
}
