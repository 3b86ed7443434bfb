//! Helpers shared by the integration tests: a real server process on a
//! free port, and the external clients the tests drive it with.

#![allow(dead_code)]

pub mod python;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A metricast process started for one test, stopped when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the binary on `127.0.0.1:0` with extra `args`.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_metricast"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start metricast");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("read server log");
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            if let Some((_, rest)) = line.split_once("listening on ") {
                addr = Some(rest.trim().parse().expect("bound address"));
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| {
            panic!("server did not start; log:\n{}", log.lock().unwrap())
        });
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Server { child, addr, log }
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
                .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(10))
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `GET /metrics` parsed as JSON.
    pub fn metrics(&self) -> serde_json::Value {
        let answer = request(self.addr, &get("/metrics"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        serde_json::from_str(body(&answer)).expect("metrics JSON")
    }

    /// Records one body with `POST /record` and returns the raw answer.
    pub fn record(&self, json: &str) -> String {
        request(self.addr, &post("/record", json))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `GET` request that closes the connection after its answer.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// A `POST` request that closes the connection after its answer.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `bytes` on a new connection and reads until the server closes it.
pub fn request(addr: SocketAddr, bytes: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(bytes.as_bytes()).unwrap();
    read_to_close(&mut stream)
}

/// A connection with a read timeout, so that a hung test fails instead.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads until end of file, as text.
pub fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read until the server closes");
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a single raw answer.
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// Runs an external program, failing with install advice when it is
/// missing.
pub fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); install it with: {install}, or run scripts/test.sh")
    })
}

/// Runs curl with `args`, returning its standard output.
pub fn curl(args: &[&str]) -> String {
    let out = run_tool(
        "curl",
        &[&["-sS", "--max-time", "10"], args].concat(),
        "apt-get install curl",
    );
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Python interpreter that has the `websockets` package.
pub fn python() -> PathBuf {
    let python = std::env::var_os("METRICAST_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let check =
        Command::new(&python).args(["-c", "import websockets"]).output();
    match check {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "{} cannot import the Python 'websockets' package; run scripts/test.sh, \
             which installs it, or set METRICAST_TEST_PYTHON to a Python that has it",
            python.display()
        ),
    }
}

/// The path of a file under `tests/`.
pub fn test_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}
