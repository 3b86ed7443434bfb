//! The Python `websockets` dashboard client of `tests/python`, driven from
//! the Rust tests.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Server;

/// `tests/python/dashboard_client.py` following one server, stopped when
/// dropped so that a failing test leaves no process behind.
pub struct PythonDashboard {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl PythonDashboard {
    /// Starts the client with `args` after the URL and returns once it has
    /// the snapshot, so that every record posted afterwards reaches it.
    pub fn subscribe(server: &Server, args: &[&str]) -> PythonDashboard {
        let script = super::test_file("python/dashboard_client.py");
        let url = format!("ws://{}/dashboard", server.addr);
        let mut child = Command::new(super::python())
            .arg(&script)
            .arg(&url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python dashboard client");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let mut client = PythonDashboard { child, lines, stderr: Some(stderr) };
        match client.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == "READY" => client,
            other => {
                let _ = client.child.kill();
                let _ = client.child.wait();
                panic!(
                    "the Python client did not report READY ({other:?}); stderr:\n{}\nserver log:\n{}",
                    client.stderr_text(),
                    server.log()
                );
            }
        }
    }

    /// Waits up to `limit` for the client to get all it expected and
    /// returns the messages it wrote, the snapshot first.
    pub fn finish(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the Python client was still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut messages = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => messages.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the client's output did not end")
                }
            }
        }
        assert!(
            status.success(),
            "the Python client failed ({status}): {}\nit wrote: {messages:#?}",
            self.stderr_text()
        );
        messages
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for PythonDashboard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
