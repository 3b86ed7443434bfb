//! metricast behind a real nginx running `deploy/nginx.conf`: records with
//! and without the bearer token, reads, the body limit at its exact edge,
//! HTTPS, and a dashboard session whose upgrade, keepalives and pongs all
//! cross the proxy.
//!
//! The shipped file is used as it is except for five lines: the two listen
//! ports (free loopback ports here), the upstream address (the test's
//! server) and the two certificate paths (a throwaway certificate made with
//! `openssl req -x509`). Everything else, locations and limits included, is
//! what a deployment runs.

mod util;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Error as WsError, Message, WebSocket};
use util::{eventually, Server};

const RECORD_TOKEN: &str = "rec-9f2c71d04b";
const READ_TOKEN: &str = "read-5ae03c8e61";
/// metricast's default --max-body-bytes, which the config mirrors.
const BODY_LIMIT: usize = 65536;

/// A directory of our own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir()
            .join(format!("metricast-nginx-{}-{nanos}", std::process::id()));
        fs::create_dir_all(path.join("logs")).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The nginx binary: Debian's, or whatever `nginx` is on the PATH.
fn nginx_program() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

const NGINX_HINT: &str = "apt-get install nginx";

/// `count` distinct ports that were free a moment ago on 127.0.0.1.
fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Replaces the single occurrence of `from` in `text`; failing when it is
/// missing or repeated keeps the test and the shipped file in step.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    let found = text.matches(from).count();
    assert_eq!(found, 1, "deploy/nginx.conf should hold {from:?} exactly once");
    text.replacen(from, to, 1)
}

/// The shipped config with the test's ports, upstream and certificate.
fn render_config(
    upstream: SocketAddr,
    plain: u16,
    tls: u16,
    cert: &Path,
    key: &Path,
) -> String {
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
    )
    .expect("read deploy/nginx.conf");
    let mut text = shipped;
    text = replace_once(
        &text,
        "server 127.0.0.1:8080;",
        &format!("server {upstream};"),
    );
    text = replace_once(
        &text,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{tls} ssl;"),
    );
    text = replace_once(
        &text,
        "listen 127.0.0.1:8081;",
        &format!("listen 127.0.0.1:{plain};"),
    );
    text = replace_once(
        &text,
        "/etc/ssl/metricast/fullchain.pem",
        &cert.display().to_string(),
    );
    text = replace_once(
        &text,
        "/etc/ssl/metricast/privkey.pem",
        &key.display().to_string(),
    );
    // Whatever the file gains later, the test's nginx stays on loopback.
    for line in text.lines().map(str::trim) {
        if line.starts_with("listen ") {
            assert!(
                line.starts_with("listen 127.0.0.1:"),
                "the test would listen beyond loopback: {line}"
            );
        }
    }
    text
}

/// A throwaway certificate for 127.0.0.1, valid for a day.
fn make_certificate(dir: &TempDir) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let args = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=metricast-test",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ];
    // Not via util::run_tool: scripts/test.sh does not install openssl
    // itself (Debian's curl brings it in through ca-certificates).
    let out = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}); install it with: apt-get install openssl")
    });
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An nginx master process started for the test; stopped on drop.
struct Nginx {
    child: Child,
    plain: u16,
    tls: u16,
    prefix: PathBuf,
}

impl Nginx {
    fn start(dir: &TempDir, upstream: SocketAddr) -> Nginx {
        let (cert, key) = make_certificate(dir);
        let ports = free_ports(2);
        let (plain, tls) = (ports[0], ports[1]);
        let config = render_config(upstream, plain, tls, &cert, &key);
        let conf_path = dir.path("nginx.conf");
        fs::write(&conf_path, config).expect("write nginx.conf");
        let prefix = format!("{}/", dir.0.display());
        let conf = conf_path.to_str().unwrap().to_owned();
        // The shipped file leaves daemon mode to whoever runs it; the test
        // keeps nginx in the foreground so that it is our child.
        let base = ["-p", &prefix, "-c", &conf, "-g", "daemon off;"];

        let check = util::run_tool(
            nginx_program(),
            &[&base[..], &["-t"]].concat(),
            NGINX_HINT,
        );
        assert!(
            check.status.success(),
            "nginx -t refused the config: {}",
            String::from_utf8_lossy(&check.stderr)
        );

        let stderr = File::create(dir.path("nginx.stderr")).unwrap();
        let child = Command::new(nginx_program())
            .args(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nginx ({e}); install it with: {NGINX_HINT}, \
                     or run scripts/test.sh"
                )
            });
        let mut nginx = Nginx { child, plain, tls, prefix: dir.0.clone() };
        let up = eventually(Duration::from_secs(5), || {
            [plain, tls]
                .iter()
                .all(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok())
        });
        if !up {
            let exited = nginx.child.try_wait().unwrap();
            panic!(
                "nginx did not start listening (exit: {exited:?}):\n{}",
                nginx.logs()
            );
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.plain)
    }

    fn tls_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.tls)
    }

    fn read_log(&self, name: &str) -> String {
        fs::read_to_string(self.prefix.join(name)).unwrap_or_default()
    }

    /// nginx's standard error and error log, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- stderr\n{}--- logs/error.log\n{}",
            self.read_log("nginx.stderr"),
            self.read_log("logs/error.log")
        )
    }

    /// The worker processes, found by their parent in /proc.
    fn workers(&self) -> Vec<i32> {
        let master = self.child.id().to_string();
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default();
                // Fields after the parenthesised name: state, then ppid.
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                after.split_whitespace().nth(1) == Some(master.as_str())
            })
            .collect()
    }

    /// Graceful stop (SIGQUIT) by PID; if that takes over five seconds,
    /// SIGKILL the master and its workers. Returns whether it was graceful.
    fn stop(&mut self) -> bool {
        if self.child.try_wait().unwrap().is_some() {
            return true;
        }
        let workers = self.workers();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in workers {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An answer as curl saw it (with `-i`): status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn curl_answer(args: &[&str]) -> Answer {
    let raw = util::curl(&[&["-i"], args].concat());
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn post_record(url: &str, body: &str, token: Option<&str>) -> Answer {
    let auth = token.map(bearer);
    let mut args = vec!["--data-binary", body, url];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    curl_answer(&args)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// The next text message as JSON, within `limit`, skipping control
/// frames. Reading is also when tungstenite answers the server's pings.
fn next_event<S: Read + Write>(
    ws: &mut WebSocket<S>,
    limit: Duration,
    set_timeout: impl Fn(&mut S, Duration),
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(1), "no message within {limit:?}");
        set_timeout(ws.get_mut(), left);
        match ws.read() {
            Ok(Message::Text(text)) => {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"));
            }
            Ok(Message::Close(frame)) => {
                panic!("the dashboard was closed: {frame:?}")
            }
            Ok(_) => {}
            Err(WsError::Io(e)) if is_timeout(&e) => {
                panic!("no message within {limit:?}")
            }
            Err(e) => panic!("dashboard read failed: {e}"),
        }
    }
}

fn tcp_timeout(stream: &mut TcpStream, left: Duration) {
    stream.set_read_timeout(Some(left)).unwrap();
}

/// The next event that is not a keepalive.
fn next_update(ws: &mut WebSocket<TcpStream>, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_event(ws, left, tcp_timeout);
        if event["event"] != "keepalive" {
            return event;
        }
    }
}

fn open_dashboard(
    nginx: &Nginx,
    token: &str,
) -> Result<WebSocket<TcpStream>, u16> {
    let stream =
        TcpStream::connect(("127.0.0.1", nginx.plain)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!(
        "ws://127.0.0.1:{}/dashboard?access_token={token}",
        nginx.plain
    );
    match tungstenite::client(url, stream) {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(HandshakeError::Failure(WsError::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("dashboard handshake through nginx failed: {e}"),
    }
}

/// A TLS connection made by `openssl s_client`, spoken to over its pipes,
/// so that the WebSocket client can run over HTTPS without a TLS crate.
struct TlsPipe {
    output: ChildStdout,
    input: ChildStdin,
}

impl Read for TlsPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.output.read(buf)
    }
}

impl Write for TlsPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.input.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.input.flush()
    }
}

/// Opens a dashboard over the TLS listener and returns its first event.
/// A watchdog kills `s_client` after ten seconds, so a stalled read ends.
fn tls_dashboard_snapshot(nginx: &Nginx, cert: &Path) -> Value {
    let connect = format!("127.0.0.1:{}", nginx.tls);
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &connect])
        .args(["-CAfile", cert.to_str().unwrap()])
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let pipe = TlsPipe {
        output: child.stdout.take().unwrap(),
        input: child.stdin.take().unwrap(),
    };
    let child = Arc::new(Mutex::new(child));
    let (done, finished) = mpsc::channel::<()>();
    let watched = Arc::clone(&child);
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = watched.lock().unwrap().kill();
        }
    });
    let url = format!("wss://127.0.0.1:{}/dashboard", nginx.tls);
    let request = tungstenite::ClientRequestBuilder::new(url.parse().unwrap())
        .with_header("Authorization", format!("Bearer {READ_TOKEN}"));
    let result = tungstenite::client(request, pipe);
    let event = match result {
        Ok((mut ws, response)) => {
            assert_eq!(response.status(), 101);
            next_event(&mut ws, Duration::from_secs(5), |_, _| {})
        }
        Err(e) => panic!("dashboard handshake over HTTPS failed: {e}"),
    };
    let _ = done.send(());
    watchdog.join().unwrap();
    let mut child = child.lock().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    event
}

#[test]
fn metricast_behind_nginx_with_the_shipped_config() {
    let dir = TempDir::new();
    let mut server = Server::start(&[
        "--record-token",
        RECORD_TOKEN,
        "--read-token",
        READ_TOKEN,
        "--keepalive",
        "1",
    ]);
    let mut nginx = Nginx::start(&dir, server.addr);
    let record = nginx.url("/record");
    let metrics = nginx.url("/metrics");

    // Writes: nginx passes Authorization through, and metricast's own
    // answers, headers included, come back unchanged.
    let body = r#"{"metric": "checkout", "value": 12.5}"#;
    let refused = post_record(&record, body, None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.json()["status"], "error");
    assert!(refused.header("WWW-Authenticate").is_some(), "{}", refused.head);
    let wrong = post_record(&record, body, Some("not-the-token"));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let ok = post_record(&record, body, Some(RECORD_TOKEN));
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, nginx.logs());
    assert_eq!(ok.body, r#"{"status":"recorded"}"#);
    assert_eq!(ok.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(ok.header("Server"), Some("nginx"), "server_tokens off");

    // Reads need the read token too.
    let auth = bearer(READ_TOKEN);
    assert_eq!(curl_answer(&[&metrics]).status, 401);
    let read = curl_answer(&["-H", &auth, &metrics]);
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["checkout"]["count"], 1);
    assert_eq!(read.json()["checkout"]["sum"], 12.5);

    // The body limit sits exactly where metricast's does: 65536 bytes go
    // through to metricast, one more is refused by nginx with a JSON error.
    let padded = |len: usize| {
        let (head, tail) = (r#"{"metric":"edge""#, "}");
        format!("{head}{}{tail}", " ".repeat(len - head.len() - tail.len()))
    };
    for (len, status) in [(BODY_LIMIT, 200), (BODY_LIMIT + 1, 413)] {
        let file = dir.path("body.json");
        fs::write(&file, padded(len)).unwrap();
        let data = format!("@{}", file.display());
        let answer = post_record(&record, &data, Some(RECORD_TOKEN));
        assert_eq!(answer.status, status, "{len} bytes: {}", answer.body);
        assert_eq!(
            answer.json()["status"],
            if status == 200 { "recorded" } else { "error" }
        );
    }

    // Only the three routes are proxied.
    let other = curl_answer(&[&nginx.url("/admin")]);
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["status"], "error");

    // HTTPS on the TLS listener, verified against the test's certificate.
    let cert = dir.path("cert.pem");
    let cacert = cert.to_str().unwrap();
    let tls_record = nginx.tls_url("/record");
    let rec_auth = bearer(RECORD_TOKEN);
    let over_tls = curl_answer(&[
        "--cacert",
        cacert,
        "-H",
        &rec_auth,
        "--data-binary",
        r#"{"metric": "checkout", "value": 0.5}"#,
        &tls_record,
    ]);
    assert_eq!(over_tls.status, 200, "{}", over_tls.body);
    assert!(over_tls.header("Strict-Transport-Security").is_some());
    let tls_read = curl_answer(&[
        "--cacert",
        cacert,
        "-H",
        &auth,
        &nginx.tls_url("/metrics"),
    ]);
    assert_eq!(tls_read.json()["checkout"]["sum"], 13.0);
    let snapshot = tls_dashboard_snapshot(&nginx, &cert);
    assert_eq!(snapshot["event"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["data"]["checkout"]["count"], 2);

    // A dashboard through the proxy. The token comes in the query string,
    // as browsers must send it.
    assert_eq!(open_dashboard(&nginx, "wrong-token-31b7").err(), Some(401));
    let mut ws = open_dashboard(&nginx, READ_TOKEN).expect("dashboard opens");
    let first = next_event(&mut ws, Duration::from_secs(5), tcp_timeout);
    assert_eq!(first["event"], "snapshot", "{first}");
    assert_eq!(first["data"]["checkout"]["count"], 2);
    let meta = r#"{"metric": "signup", "metadata": {"plan": "pro"}}"#;
    assert_eq!(post_record(&record, meta, Some(RECORD_TOKEN)).status, 200);
    let update = next_update(&mut ws, Duration::from_secs(5));
    assert_eq!(update["event"], "metric_update", "{update}");
    assert_eq!(update["metric"], "signup");
    assert_eq!(update["value"], 1.0);
    assert_eq!(update["metadata"]["plan"], "pro");

    // With --keepalive 1 metricast closes a dashboard silent for 2 s.
    // Three keepalives later the dashboard is still there, so the pongs
    // tungstenite sends make it through nginx to metricast.
    let started = Instant::now();
    let mut keepalives = 0;
    while keepalives < 3 {
        let event = next_event(&mut ws, Duration::from_secs(3), tcp_timeout);
        assert_eq!(event["event"], "keepalive", "{event}");
        keepalives += 1;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let late = r#"{"metric": "late", "value": 2}"#;
    assert_eq!(post_record(&record, late, Some(RECORD_TOKEN)).status, 200);
    let update = next_update(&mut ws, Duration::from_secs(5));
    assert_eq!(update["metric"], "late", "{update}");
    ws.close(None).unwrap();
    let closed = eventually(Duration::from_secs(3), || ws.read().is_err());
    assert!(closed, "the dashboard did not finish closing");
    drop(ws);

    // Thirteen requests reached metricast (ten plain ones and three
    // upgrades); the upstream keepalive pool carried the plain ones over a
    // few connections instead of one each.
    let opened = server
        .log()
        .lines()
        .filter(|l| l.contains(" http ") && l.ends_with(": connected"))
        .count();
    assert!(
        opened <= 8,
        "{opened} connections to metricast for 13 requests; \
         is the upstream keepalive working?\n{}",
        server.log()
    );

    // Tokens stay out of nginx's access log (the query string is not
    // logged) and out of metricast's log (redacted).
    let logged = eventually(Duration::from_secs(3), || {
        nginx
            .read_log("logs/access.log")
            .contains("\"GET /dashboard HTTP/1.1\" 101")
    });
    let access = nginx.read_log("logs/access.log");
    assert!(logged, "dashboard not in the access log:\n{access}");
    for secret in [READ_TOKEN, RECORD_TOKEN, "wrong-token-31b7"] {
        assert!(
            !access.contains(secret),
            "{secret} in the access log:\n{access}"
        );
        assert!(!server.log().contains(secret), "{secret} in metricast's log");
    }

    // With metricast gone, nginx answers in metricast's error shape.
    assert!(server.terminate().success());
    let gone = curl_answer(&["-H", &auth, &metrics]);
    assert_eq!(gone.status, 502, "{}", gone.body);
    assert_eq!(gone.json()["status"], "error");

    assert!(nginx.stop(), "nginx did not stop gracefully:\n{}", nginx.logs());
}
