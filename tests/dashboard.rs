//! The `/dashboard` WebSocket as its clients see it: snapshot and update
//! order, the handshake, keepalives, dead and slow clients, disconnects and
//! shutdown.

mod util;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message, WebSocket};
use util::{eventually, Server};

type Ws = WebSocket<TcpStream>;

/// The example key of RFC 6455 section 1.3 and the accept value the RFC
/// gives for it, so the check does not trust any library's derivation.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Opens a dashboard with tungstenite's client handshake.
fn open_dashboard(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("ws://{addr}/dashboard");
    let (ws, response) = tungstenite::client(url, stream)
        .unwrap_or_else(|e| panic!("dashboard handshake failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message as raw text and parsed JSON, skipping control
/// frames (reading on is also what makes tungstenite send its pongs).
fn next_event(ws: &mut Ws, limit: Duration) -> (String, Value) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1), "no message within {limit:?}");
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Text(text)) => {
                let value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"));
                return (text.as_str().to_owned(), value);
            }
            Ok(Message::Close(frame)) => {
                panic!("server closed the dashboard: {frame:?}")
            }
            Ok(_) => {}
            Err(WsError::Io(e)) if is_timeout(&e) => {
                panic!("no message within {limit:?}")
            }
            Err(e) => panic!("dashboard read failed: {e}"),
        }
    }
}

/// The next message that is not a keepalive.
fn next_non_keepalive(ws: &mut Ws, limit: Duration) -> (String, Value) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (raw, event) = next_event(ws, left);
        if event["event"] != "keepalive" {
            return (raw, event);
        }
    }
}

fn update(metric: &str, value: f64, metadata: Value) -> Value {
    json!({"event": "metric_update", "metric": metric, "value": value, "metadata": metadata})
}

fn assert_recorded(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 200"), "record refused: {answer}");
}

/// A keep-alive HTTP connection that pipelines `POST /record` requests.
struct Recorder {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Recorder {
    fn connect(addr: SocketAddr) -> Recorder {
        let stream = util::connect(addr);
        Recorder {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends all `bodies` in one write, then reads their answers; returns
    /// the statuses in order.
    fn post_all(&mut self, bodies: &[String]) -> Vec<u16> {
        let mut out = Vec::new();
        for body in bodies {
            write!(
                out,
                "POST /record HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        self.writer.write_all(&out).unwrap();
        bodies.iter().map(|_| read_answer(&mut self.reader).0).collect()
    }
}

/// Reads one HTTP answer with a `Content-Length` body.
fn read_answer(reader: &mut impl BufRead) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("Content-Length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("answer body");
    (status, String::from_utf8(body).unwrap())
}

/// A server-to-client frame.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn json(&self) -> Value {
        assert_eq!(self.opcode, OP_TEXT, "expected a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("text frame holds JSON")
    }
}

/// A masked client frame, as RFC 6455 requires of clients.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "only short frames are needed here");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The upgrade request, spelled the way browsers and proxies variously do.
fn upgrade_request() -> String {
    format!(
        "GET /dashboard HTTP/1.1\r\nhost: metricast\r\n\
         connection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\n\
         sec-websocket-key: {KEY}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n"
    )
}

/// A dashboard spoken to byte by byte, for when the test must control
/// exactly what is sent, or must not answer pings.
struct RawDashboard {
    stream: TcpStream,
    /// Received bytes not yet parsed; kept across read timeouts so that a
    /// timed-out wait never loses half a frame.
    input: Vec<u8>,
}

impl RawDashboard {
    /// Sends `bytes`, which begin with an upgrade request, and returns the
    /// dashboard and the answer's head.
    fn open_with(addr: SocketAddr, bytes: &[u8]) -> (RawDashboard, String) {
        let mut dash =
            RawDashboard { stream: util::connect(addr), input: Vec::new() };
        dash.stream.write_all(bytes).unwrap();
        let end = loop {
            if let Some(at) = find(&dash.input, b"\r\n\r\n") {
                break at + 4;
            }
            let n = dash.fill().expect("read upgrade answer");
            assert!(n > 0, "closed during the handshake: {:?}", dash.input);
        };
        let head = String::from_utf8_lossy(&dash.input[..end]).into_owned();
        dash.input.drain(..end);
        (dash, head)
    }

    /// Completes the handshake and reads the snapshot.
    fn open(addr: SocketAddr) -> (RawDashboard, Value) {
        let (mut dash, head) =
            RawDashboard::open_with(addr, upgrade_request().as_bytes());
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let snapshot = dash.frame().unwrap().expect("snapshot frame").json();
        assert_eq!(snapshot["event"], "snapshot");
        (dash, snapshot)
    }

    fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    fn set_timeout(&self, limit: Duration) {
        self.stream.set_read_timeout(Some(limit)).unwrap();
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.input.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next frame, or `None` when the server closed the connection
    /// between frames.
    fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, len)) = parse_frame(&self.input) {
                self.input.drain(..len);
                return Ok(Some(frame));
            }
            if self.fill()? == 0 {
                assert!(
                    self.input.is_empty(),
                    "server hung up inside a frame: {:?}",
                    self.input
                );
                return Ok(None);
            }
        }
    }

    /// Frames until one satisfies `wanted`; fails the test after `limit`.
    fn frame_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> Frame {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.set_timeout(left.max(Duration::from_millis(1)));
            match self.frame() {
                Ok(Some(frame)) if wanted(&frame) => return frame,
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("server closed the dashboard before {what}"),
                Err(e) if is_timeout(&e) => panic!(
                    "waited {limit:?} for {what} in vain: {seen} other frames \
                     came, then silence with {} bytes of a frame pending",
                    self.input.len()
                ),
                Err(e) => {
                    panic!("dashboard read failed waiting for {what}: {e}")
                }
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A complete server frame at the front of `input`, and its length.
fn parse_frame(input: &[u8]) -> Option<(Frame, usize)> {
    let [b0, b1, rest @ ..] = input else { return None };
    assert_eq!(b0 & 0x80, 0x80, "fragmented frames are not expected");
    assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
    let (len, header) = match b1 & 0x7f {
        126 => {
            (u16::from_be_bytes(rest.get(..2)?.try_into().unwrap()) as usize, 4)
        }
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = input.get(header..header + len)?.to_vec();
    Some((Frame { opcode: b0 & 0x0f, payload }, header + len))
}

/// The header `name` of a raw answer head, matched case-insensitively.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn snapshot_then_one_update_per_accepted_record_in_accept_order() {
    let server = Server::start(&[]);
    assert_recorded(
        &server
            .record(r#"{"metric":"early","value":2.5,"metadata":{"k":"v"}}"#),
    );
    assert_recorded(&server.record(r#"{"metric":"early"}"#));
    let mut ws = open_dashboard(server.addr);

    let (_, snapshot) = next_non_keepalive(&mut ws, Duration::from_secs(5));
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["data"]["early"]["count"], 2);
    assert_eq!(snapshot["data"], server.metrics());

    // Refused records are mixed in where an update would show up out of
    // place: both a malformed body and one the store turns down (the
    // second huge value would overflow the sum). The closing "done"
    // record catches an update for a refusal at the very end.
    let mut bodies = Vec::new();
    let mut statuses = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u64 {
        if i % 25 == 0 {
            bodies.push(r#"{"metric":"seq","value":"ten"}"#.to_owned());
            statuses.push(400);
        }
        if i == 100 {
            for status in [200, 400] {
                bodies.push(r#"{"metric":"huge","value":1.5e308}"#.to_owned());
                statuses.push(status);
            }
            expected.push(update("huge", 1.5e308, Value::Null));
        }
        bodies.push(format!(
            r#"{{"metric":"seq","value":{i},"metadata":{{"i":{i}}}}}"#
        ));
        statuses.push(200);
        expected.push(update("seq", i as f64, json!({"i": i})));
    }
    bodies.push(r#"{"metric":"done"}"#.to_owned());
    statuses.push(200);
    expected.push(update("done", 1.0, Value::Null));

    let addr = server.addr;
    let poster =
        std::thread::spawn(move || Recorder::connect(addr).post_all(&bodies));

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_millis(1),
            "only {} of {} updates in 10 s",
            received.len(),
            expected.len()
        );
        let (raw, event) = next_non_keepalive(&mut ws, left);
        if event["metric"] == "seq" {
            let i = event["metadata"]["i"].as_u64().expect("seq metadata");
            // Whole values must keep their decimal point on the wire.
            assert!(raw.contains(&format!(r#""value":{i}.0"#)), "{raw}");
        }
        received.push(event);
    }
    assert_eq!(poster.join().unwrap(), statuses);
    if let Some(at) = (0..expected.len()).find(|&i| received[i] != expected[i])
    {
        panic!(
            "update {at} is {} but should be {}",
            received[at], expected[at]
        );
    }
    assert_eq!(server.metrics()["seq"]["count"], 200);
}

#[test]
fn upgrade_with_several_connection_tokens_and_mixed_case_succeeds() {
    let server = Server::start(&[]);
    assert_recorded(&server.record(r#"{"metric":"m","value":3}"#));
    let (mut dash, head) =
        RawDashboard::open_with(server.addr, upgrade_request().as_bytes());

    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header(&head, "sec-websocket-accept"), Some(ACCEPT), "{head}");
    assert!(
        header(&head, "upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head}"
    );
    assert_eq!(header(&head, "sec-websocket-protocol"), None, "{head}");
    assert_eq!(header(&head, "sec-websocket-extensions"), None, "{head}");

    dash.set_timeout(Duration::from_secs(5));
    let snapshot = dash.frame().unwrap().expect("snapshot frame").json();
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["data"]["m"]["sum"], 3.0);
    assert_eq!(snapshot["data"], server.metrics());
}

#[test]
fn a_frame_sent_in_the_same_write_as_the_upgrade_is_answered() {
    let server = Server::start(&[]);
    let mut bytes = upgrade_request().into_bytes();
    bytes.extend(client_frame(OP_PING, b"are you there"));
    let (mut dash, head) = RawDashboard::open_with(server.addr, &bytes);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // The client sends nothing more, so only the bytes that came with the
    // handshake can prompt this pong.
    let pong = dash
        .frame_until("pong", Duration::from_secs(3), |f| f.opcode == OP_PONG);
    assert_eq!(pong.payload, b"are you there");
}

#[test]
fn keepalive_message_and_ping_arrive_every_interval() {
    let server = Server::start(&["--keepalive", "1"]);
    let mut ws = open_dashboard(server.addr);
    let mut messages = Vec::new();
    let mut pings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while messages.len() < 2 || pings.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_millis(1),
            "{} keepalives and {} pings in 6 s",
            messages.len(),
            pings.len()
        );
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match ws.read().expect("dashboard read") {
            Message::Text(text) if text.as_str().contains("keepalive") => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(event, json!({"event": "keepalive"}));
                messages.push(Instant::now());
            }
            Message::Ping(_) => pings.push(Instant::now()),
            _ => {}
        }
    }
    for (what, times) in [("keepalive", &messages), ("ping", &pings)] {
        let gap = times[1] - times[0];
        assert!(
            gap > Duration::from_millis(500)
                && gap < Duration::from_millis(2500),
            "{what}s {gap:?} apart with --keepalive 1"
        );
    }
}

#[test]
fn a_silent_dashboard_is_closed_but_one_that_answers_pings_stays() {
    let server = Server::start(&["--keepalive", "1"]);
    let addr = server.addr;
    // Both clients run side by side so the test waits out the timeout once.
    let silent = std::thread::spawn(move || {
        let (mut dash, _) = RawDashboard::open(addr);
        let opened = Instant::now();
        // Pings keep arriving while it is open, so only a deadline of our
        // own ends the wait for a server that never gives up.
        let give_up = opened + Duration::from_secs(5);
        while Instant::now() < give_up {
            dash.set_timeout(give_up - Instant::now());
            match dash.frame() {
                Ok(None) => break,
                Ok(Some(f)) if f.opcode == OP_CLOSE => break,
                Ok(Some(_)) => {}
                // A reset also means the server gave up on the client.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("silent dashboard read failed: {e}"),
            }
        }
        opened.elapsed()
    });

    let mut ws = open_dashboard(addr);
    let lively = Instant::now();
    while lively.elapsed() < Duration::from_millis(4500) {
        ws.get_mut().set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match ws.read() {
            Ok(Message::Close(frame)) => {
                panic!("answering dashboard closed: {frame:?}")
            }
            Ok(_) => {}
            Err(e) => panic!(
                "answering dashboard lost after {:?}: {e}",
                lively.elapsed()
            ),
        }
    }
    // Still subscribed, not merely still connected.
    assert_recorded(&server.record(r#"{"metric":"alive"}"#));
    let (_, event) = next_non_keepalive(&mut ws, Duration::from_secs(3));
    assert_eq!(event["metric"], "alive");

    let closed_after = silent.join().unwrap();
    assert!(
        closed_after > Duration::from_millis(1500)
            && closed_after < Duration::from_secs(4),
        "silent dashboard closed after {closed_after:?} with --keepalive 1"
    );
}

/// Padding in each slow-reader record's metadata: with the default 100
/// metadata entries kept, the snapshot is ~300 KB, larger than one write
/// turn, as a real dashboard's state can be.
const PAD: usize = 3000;
/// Records posted while the dashboard does not read: ~45 MB of updates.
const SLOW_RECORDS: usize = 15_000;
/// Records per pipelined batch.
const BATCH: usize = 150;
/// The server's default `--metadata-limit`.
const METADATA_LIMIT: usize = 100;

/// Applies a dashboard message to the state a dashboard would display.
fn apply(view: &mut Value, event: &Value) {
    match event["event"].as_str() {
        Some("snapshot") => *view = event["data"].clone(),
        Some("metric_update") => {
            let name = event["metric"].as_str().expect("metric name");
            let metric = view
                .as_object_mut()
                .expect("state object")
                .entry(name)
                .or_insert_with(
                    || json!({"count": 0, "sum": 0.0, "metadata": []}),
                );
            let count = metric["count"].as_u64().unwrap();
            metric["count"] = json!(count + 1);
            // Exact while sums stay whole numbers below 2^53, as here.
            let sum = metric["sum"].as_f64().unwrap()
                + event["value"].as_f64().unwrap();
            metric["sum"] = json!(sum);
            if !event["metadata"].is_null() {
                let list = metric["metadata"].as_array_mut().unwrap();
                list.push(event["metadata"].clone());
                if list.len() > METADATA_LIMIT {
                    list.remove(0);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn a_dashboard_that_stops_reading_is_resynced_with_bounded_memory() {
    let server = Server::start(&["--max-dashboard-lag", "65536"]);
    let (mut dash, mut view) = RawDashboard::open(server.addr);
    view = view["data"].take();
    let before = server.rss_kib();

    let pad = "x".repeat(PAD);
    let mut recorder = Recorder::connect(server.addr);
    let mut broadcast = 0;
    for batch in 0..SLOW_RECORDS / BATCH {
        let bodies: Vec<String> = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                format!(
                    r#"{{"metric":"slow","value":{n},"metadata":{{"n":{n},"pad":"{pad}"}}}}"#
                )
            })
            .collect();
        broadcast += bodies.iter().map(String::len).sum::<usize>();
        let statuses = recorder.post_all(&bodies);
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    let after = server.rss_kib();

    // The kernel's socket buffers absorb a few MB of the ~45 MB broadcast;
    // a server that queued the rest would grow by tens of MiB, while the
    // lag limit keeps its queue near 64 KiB.
    let growth_kib = after.saturating_sub(before);
    assert!(broadcast > 40 << 20, "only {broadcast} bytes broadcast");
    assert!(
        growth_kib < 12 << 10,
        "RSS grew by {growth_kib} KiB ({before} -> {after}) while \
         {broadcast} bytes were broadcast"
    );
    let warning = format!("dashboard {}: fell ", dash.local_addr());
    assert!(
        eventually(Duration::from_secs(2), || {
            server
                .log()
                .lines()
                .any(|l| l.contains(&warning) && l.contains("behind"))
        }),
        "no lag warning; log:\n{}",
        server.log()
    );

    // Nothing is recorded while the dashboard catches up, so the fresh
    // snapshot it is owed is the only thing that can bring it up to date.
    let state = server.metrics();
    assert_eq!(state["slow"]["count"], SLOW_RECORDS);
    let mut snapshots = 0;
    dash.frame_until(
        "the view to match GET /metrics",
        Duration::from_secs(10),
        |f| {
            if f.opcode != OP_TEXT {
                return false;
            }
            let event = f.json();
            snapshots += usize::from(event["event"] == "snapshot");
            apply(&mut view, &event);
            view == state
        },
    );
    assert!(snapshots > 0, "caught up without a fresh snapshot");

    assert_recorded(&server.record(r#"{"metric":"after","value":7}"#));
    let next = dash
        .frame_until("update", Duration::from_secs(5), |f| f.opcode == OP_TEXT);
    assert_eq!(next.json(), update("after", 7.0, Value::Null));
}

#[test]
fn an_abrupt_disconnect_unsubscribes_at_once() {
    let server = Server::start(&[]);
    let mut ws = open_dashboard(server.addr);
    next_non_keepalive(&mut ws, Duration::from_secs(5));
    let local = ws.get_ref().local_addr().unwrap();
    drop(ws);

    let gone = format!("dashboard {local}: disconnected");
    assert!(
        eventually(Duration::from_secs(1), || server.log().contains(&gone)),
        "no {gone:?} within 1 s; log:\n{}",
        server.log()
    );
    for i in 0..10 {
        assert_recorded(
            &server
                .record(&format!(r#"{{"metric":"after_drop","value":{i}}}"#)),
        );
    }
    assert_eq!(server.metrics()["after_drop"]["count"], 10);
}

#[test]
fn sigterm_closes_dashboards_with_1001_and_exits_cleanly() {
    let mut server = Server::start(&[]);
    let mut ws = open_dashboard(server.addr);
    next_non_keepalive(&mut ws, Duration::from_secs(5));

    let idle = util::connect(server.addr);
    let mut idle_reader = BufReader::new(idle.try_clone().unwrap());
    (&idle).write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut idle_reader).0, 200);

    // The dashboard must keep reading so that tungstenite answers the close
    // and the server's closing handshake can finish.
    let dashboard = std::thread::spawn(move || {
        let mut close: Option<Option<CloseFrame>> = None;
        loop {
            match ws.read() {
                Ok(Message::Close(frame)) => close = Some(frame),
                Ok(_) => {}
                Err(WsError::ConnectionClosed) => break,
                Err(e) => {
                    panic!("dashboard read failed before the close ended: {e}")
                }
            }
        }
        close
    });

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let close = dashboard.join().unwrap().expect("a close frame");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));

    let mut rest = Vec::new();
    idle_reader.read_to_end(&mut rest).expect("idle connection closed");
    assert!(
        rest.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(server.log().contains("stopped"), "log:\n{}", server.log());
}

#[test]
fn text_and_binary_from_the_client_are_ignored() {
    let server = Server::start(&[]);
    let mut ws = open_dashboard(server.addr);
    next_non_keepalive(&mut ws, Duration::from_secs(5));

    ws.send(Message::text("hello server")).unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_recorded(&server.record(r#"{"metric":"still_here","value":4}"#));
    let (_, event) = next_non_keepalive(&mut ws, Duration::from_secs(5));
    assert_eq!(event, update("still_here", 4.0, Value::Null));

    ws.send(Message::text("again")).unwrap();
    assert_recorded(&server.record(r#"{"metric":"still_here","value":5}"#));
    let (_, event) = next_non_keepalive(&mut ws, Duration::from_secs(5));
    assert_eq!(event, update("still_here", 5.0, Value::Null));
}

#[test]
fn a_client_close_is_answered_with_a_close() {
    let server = Server::start(&[]);
    let (mut dash, _) = RawDashboard::open(server.addr);
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    dash.send(&client_frame(OP_CLOSE, &payload));

    let close = dash.frame_until("close reply", Duration::from_secs(3), |f| {
        f.opcode == OP_CLOSE
    });
    assert!(close.payload.len() >= 2, "close without a code: {close:?}");
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1000);
    // No update may follow a close.
    assert_recorded(&server.record(r#"{"metric":"late"}"#));
    dash.set_timeout(Duration::from_secs(3));
    match dash.frame() {
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to hang up, got {other:?}"),
    }
}

/// Reads a `metricast_*` counter from the Prometheus exposition.
fn self_metric(server: &Server, name: &str) -> f64 {
    let text = util::curl(&[&server.url("/metrics?format=prometheus")]);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[test]
fn a_flush_window_gathers_updates_into_fewer_writes_and_loses_none() {
    let server = Server::start(&["--dashboard-flush-ms", "100"]);
    let mut ws = open_dashboard(server.addr);
    assert_eq!(
        next_event(&mut ws, Duration::from_secs(5)).1["event"],
        "snapshot"
    );
    let writes_before =
        self_metric(&server, "metricast_dashboard_writes_total");
    let mut recorder = Recorder::connect(server.addr);
    // Posted one at a time, each in its own loop turn, within the window.
    for i in 0..10 {
        let body = format!(r#"{{"metric":"gathered","value":{i}}}"#);
        assert_eq!(recorder.post_all(&[body]), [200]);
    }
    for i in 0..10 {
        let (_, event) = next_non_keepalive(&mut ws, Duration::from_secs(5));
        assert_eq!(event, update("gathered", f64::from(i), Value::Null));
    }
    let writes = self_metric(&server, "metricast_dashboard_writes_total")
        - writes_before;
    assert!(writes <= 3.0, "10 updates took {writes} writes");
}
