//! End to end on real data: `metricast replay` sends a recorded event
//! stream, then `GET /metrics` must equal the state worked out
//! independently in `tests/data/*.expected.json`, and a dashboard that was
//! connected throughout must have seen every record, in order.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use util::python::PythonDashboard;
use util::Server;

/// Rows in the data files, as `tests/data/README.md` gives them.
const TIPS_RECORDS: usize = 488;
const FLIGHTS_RECORDS: usize = 106_368;

/// The exact value of a JSON number's text, so that `42`, `42.0` and
/// `4.2e1` compare equal while `4827.770000000001` and `4827.77` do not:
/// the sign, the significant digits and the power of ten.
fn exact_decimal(text: &str) -> (bool, String, i64) {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()),
        None => (unsigned, Some(0)),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent = exponent
        .filter(|_| !int.is_empty() && digits_only(int) && digits_only(frac))
        .unwrap_or_else(|| panic!("{text:?} is not a plain decimal number"));
    let all = format!("{int}{frac}");
    let significant = all.trim_start_matches('0');
    let digits = significant.trim_end_matches('0');
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    let trailing_zeros = (significant.len() - digits.len()) as i64;
    (negative, digits.to_owned(), exponent - frac.len() as i64 + trailing_zeros)
}

/// Checks that `actual`, written by the server, is the exact decimal
/// `expected` and keeps the decimal point that marks a float.
fn assert_same_decimal(actual: &str, expected: &str, what: &str) {
    assert!(actual.contains('.'), "{what}: {actual} lacks its decimal point");
    assert_eq!(
        exact_decimal(actual),
        exact_decimal(expected),
        "{what}: got {actual}, expected {expected}"
    );
}

/// One line of a data file: a `POST /record` body.
#[derive(Deserialize)]
struct Record {
    metric: String,
    value: Option<Box<RawValue>>,
    metadata: Option<Value>,
}

/// A dashboard message, with the value's number text kept as written.
#[derive(Deserialize)]
struct Message {
    event: String,
    metric: Option<String>,
    value: Option<Box<RawValue>>,
}

/// A field of a JSON message, where a `null` is told apart from a missing
/// field (which `Option` in a derived struct would merge).
fn field(line: &str, name: &str) -> Option<Value> {
    let whole: Value = serde_json::from_str(line).expect("message JSON");
    whole.get(name).cloned()
}

/// One metric of `GET /metrics`, with the sum's number text kept as
/// written.
#[derive(Deserialize)]
struct Metric {
    count: u64,
    sum: Box<RawValue>,
    metadata: Vec<Value>,
}

/// One metric of an `.expected.json` file.
#[derive(Deserialize)]
struct Expected {
    count: u64,
    sum: String,
    metadata: Vec<Value>,
}

fn non_empty_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|line| !line.trim().is_empty()).collect()
}

fn read_data(name: &str) -> String {
    let path = util::test_file(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn gunzip_data(name: &str) -> String {
    let path = util::test_file(name);
    let out = util::run_tool(
        "gzip",
        &["-dc", path.to_str().unwrap()],
        "apt-get install gzip",
    );
    assert!(
        out.status.success(),
        "gzip -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 records")
}

/// What `metricast replay` did.
struct Replay {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `metricast replay` against `server`, with `file` as its input
/// (`-` reads `stdin`), killing it if it takes longer than `limit`.
fn replay(
    server: &Server,
    file: &str,
    stdin: Option<String>,
    limit: Duration,
) -> Replay {
    let url = server.url("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_metricast"))
        .args(["replay", file, "--url", &url])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start metricast replay");
    let feeder = stdin.map(|text| {
        let mut pipe = child.stdin.take().unwrap();
        // Dropping the pipe at the end is the end of the input.
        std::thread::spawn(move || pipe.write_all(text.as_bytes()))
    });
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, limit, "metricast replay");
    if let Some(feeder) = feeder {
        feeder.join().unwrap().expect("feed the records to metricast replay");
    }
    Replay {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_in_background(
    mut pipe: impl Read + Send + 'static,
) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_replayed_all(replay: &Replay, records: usize) {
    let expected =
        format!("replayed {records} records: {records} recorded, 0 refused");
    assert!(
        replay.status.success() && replay.stdout.starts_with(&expected),
        "expected {expected:?} and success, got {} with\nstdout: {}\nstderr: {}",
        replay.status,
        replay.stdout,
        replay.stderr
    );
}

/// Compares `GET /metrics` with an `.expected.json` file: the same names,
/// counts, exact sums and metadata.
fn assert_metrics_match(server: &Server, expected_file: &str) {
    let answer = util::request(server.addr, &util::get("/metrics"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = util::body(&answer);
    let actual: BTreeMap<String, Metric> = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("bad /metrics answer: {e}\n{body}"));
    let expected: BTreeMap<String, Expected> =
        serde_json::from_str(&read_data(expected_file)).expect("expected JSON");
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "metric names"
    );
    for (name, want) in &expected {
        let got = &actual[name];
        assert_eq!(got.count, want.count, "count of {name}");
        assert_same_decimal(
            got.sum.get(),
            &want.sum,
            &format!("sum of {name}"),
        );
        assert_eq!(got.metadata, want.metadata, "metadata of {name}");
    }
}

/// Checks that `messages` are the snapshot of an empty server followed by
/// exactly one `metric_update` per line of `records`, in order.
fn assert_dashboard_saw_every_record(messages: &[String], records: &[&str]) {
    let first: Value =
        serde_json::from_str(&messages[0]).expect("snapshot JSON");
    assert_eq!(first, serde_json::json!({"event": "snapshot", "data": {}}));
    let updates = &messages[1..];
    for (index, (line, record)) in updates.iter().zip(records).enumerate() {
        let at = format!("update {} for line {}: {line}", index + 1, index + 1);
        let update: Message =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(
            update.event, "metric_update",
            "{at}; a resync drops updates"
        );
        let record: Record = serde_json::from_str(record).expect("record JSON");
        assert_eq!(
            update.metric.as_deref(),
            Some(record.metric.as_str()),
            "{at}"
        );
        let sent = record.value.as_ref().map_or("1", |v| v.get());
        let value = update.value.unwrap_or_else(|| panic!("{at}: no value"));
        assert_same_decimal(value.get(), sent, &at);
        assert_eq!(
            field(line, "metadata"),
            Some(record.metadata.unwrap_or(Value::Null)),
            "{at}"
        );
    }
    assert_eq!(updates.len(), records.len(), "one update per record");
}

/// Follows `/dashboard` with tungstenite on a thread until `expect`
/// updates arrived. The receiver fires once the snapshot is in. Ends with
/// an error on a second snapshot (a resync), a closed connection, or after
/// `limit`.
fn tungstenite_dashboard(
    addr: SocketAddr,
    expect: usize,
    limit: Duration,
) -> (Receiver<()>, JoinHandle<Result<Vec<String>, String>>) {
    let (ready, subscribed) = mpsc::channel();
    let follower = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}/dashboard"), stream)
                .map_err(|e| format!("handshake: {e}"))?;
        let mut messages = Vec::with_capacity(expect + 1);
        let mut updates = 0;
        while updates < expect {
            if Instant::now() >= deadline {
                return Err(format!("timed out after {limit:?} with {updates} of {expect} updates"));
            }
            let text = match ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    text.as_str().to_owned()
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(format!(
                        "after {updates} of {expect} updates: {e}"
                    ))
                }
            };
            if text == r#"{"event":"keepalive"}"# {
                continue;
            }
            if text.starts_with(r#"{"event":"snapshot""#) {
                if messages.is_empty() {
                    let _ = ready.send(());
                } else {
                    return Err(format!(
                        "resynced with a snapshot after {updates} updates"
                    ));
                }
            } else {
                updates += 1;
            }
            messages.push(text);
        }
        let _ = ws.close(None);
        Ok(messages)
    });
    (subscribed, follower)
}

#[test]
fn tips_replay_gives_the_exact_expected_state_and_a_python_dashboard_sees_every_record(
) {
    let data = read_data("data/tips.ndjson");
    let records = non_empty_lines(&data);
    assert_eq!(records.len(), TIPS_RECORDS);
    let server = Server::start(&[]);
    let expect = records.len().to_string();
    let dashboard = PythonDashboard::subscribe(
        &server,
        &["--expect", &expect, "--timeout", "60"],
    );

    let path = util::test_file("data/tips.ndjson");
    let run =
        replay(&server, path.to_str().unwrap(), None, Duration::from_secs(60));
    assert_replayed_all(&run, records.len());

    // Summed in binary floating point, revenue would be 4827.770000000001.
    assert_metrics_match(&server, "data/tips.expected.json");
    let messages = dashboard.finish(Duration::from_secs(60));
    assert_dashboard_saw_every_record(&messages, &records);
}

#[test]
fn flights_replay_from_gzip_gives_the_exact_expected_state_and_every_update_in_order(
) {
    let data = gunzip_data("data/flights-2013-01.ndjson.gz");
    let records = non_empty_lines(&data);
    assert_eq!(records.len(), FLIGHTS_RECORDS);
    // The replay can outpace the dashboard reader, and past the lag limit
    // the server drops a client's queued updates for a fresh snapshot. This
    // test checks every single update, so the limit is set far above the
    // whole feed (about 10 MB of frames) to rule a resync out.
    let server = Server::start(&["--max-dashboard-lag", "268435456"]);
    let (subscribed, follower) = tungstenite_dashboard(
        server.addr,
        records.len(),
        Duration::from_secs(240),
    );
    if subscribed.recv_timeout(Duration::from_secs(20)).is_err() {
        panic!(
            "the dashboard got no snapshot: {:?}",
            follower.join().unwrap().err()
        );
    }

    let run =
        replay(&server, "-", Some(data.clone()), Duration::from_secs(240));
    assert_replayed_all(&run, records.len());

    assert_metrics_match(&server, "data/flights-2013-01.expected.json");
    let messages =
        follower.join().unwrap().unwrap_or_else(|e| panic!("dashboard: {e}"));
    assert_dashboard_saw_every_record(&messages, &records);
}

#[test]
fn replay_reports_a_refused_line_fails_and_still_records_the_others() {
    let server = Server::start(&[]);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("replay-bad-line-{}.ndjson", std::process::id()));
    let records = concat!(
        "{\"metric\": \"orders\", \"value\": 2}\n",
        "{\"metric\": \"orders\", \"value\": \n",
        "\n",
        "{\"metric\": \"orders\", \"value\": 3.5, \"metadata\": {\"id\": 7}}\n",
    );
    std::fs::write(&path, records).expect("write the records file");
    let run =
        replay(&server, path.to_str().unwrap(), None, Duration::from_secs(30));
    let _ = std::fs::remove_file(&path);

    assert!(
        !run.status.success(),
        "a refused line must fail the replay: {}",
        run.stdout
    );
    assert!(
        run.stdout.starts_with("replayed 3 records: 2 recorded, 1 refused"),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("line 2: 400"),
        "the refusal names its line: {}",
        run.stderr
    );
    let metrics = server.metrics();
    assert_eq!(
        metrics,
        serde_json::json!({"orders": {"count": 2, "sum": 5.5, "metadata": [{"id": 7}]}})
    );
}

#[test]
fn exact_decimal_comparison_tells_float_noise_from_the_exact_sum() {
    assert_eq!(exact_decimal("42"), exact_decimal("42.0"));
    assert_eq!(exact_decimal("4.2e1"), exact_decimal("42.000"));
    assert_eq!(exact_decimal("0.05"), exact_decimal("5E-2"));
    assert_eq!(exact_decimal("-0.50"), exact_decimal("-0.5"));
    assert_eq!(exact_decimal("-0"), exact_decimal("0.0"));
    assert_ne!(exact_decimal("4827.770000000001"), exact_decimal("4827.77"));
    assert_ne!(exact_decimal("420"), exact_decimal("42"));
    assert_ne!(exact_decimal("-1.0"), exact_decimal("1"));
}
