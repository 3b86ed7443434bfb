//! HTTP behaviour of the real server over real sockets: framing, keep-alive,
//! pipelining, every error status, and curl as a user would run it.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{body, connect, get, post, read_to_close, request, Server};

/// Reads exactly `count` complete answers from a keep-alive connection.
fn read_answers(stream: &mut TcpStream, count: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < count {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = answer.parse(&buf) {
            if answer.code == Some(100) {
                buf.drain(..head);
                continue;
            }
            let length: usize = answer
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= head + length {
                let text = String::from_utf8_lossy(&buf[..head + length]);
                answers.push(text.into_owned());
                buf.drain(..head + length);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("answer before timeout");
        assert!(n > 0, "server closed early; got {answers:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.is_empty(), "unexpected extra bytes");
    answers
}

fn status(answer: &str) -> u16 {
    answer[9..12].parse().unwrap()
}

fn keep_alive_post(body: &str) -> String {
    format!(
        "POST /record HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn curl_records_and_reads_metrics_as_json() {
    let server = Server::start(&[]);
    let recorded = util::curl(&[
        &server.url("/record"),
        "-d",
        r#"{"metric": "revenue", "value": 49.99, "metadata": {"plan": "pro"}}"#,
    ]);
    assert_eq!(recorded, r#"{"status":"recorded"}"#);
    util::curl(&[&server.url("/record"), "-d", r#"{"metric": "signup"}"#]);
    let answer = util::curl(&["-i", &server.url("/metrics")]);
    assert!(answer.contains("Content-Type: application/json"), "{answer}");
    let metrics: serde_json::Value =
        serde_json::from_str(body(&answer)).unwrap();
    assert_eq!(
        metrics,
        serde_json::json!({
            "revenue": {"count": 1, "sum": 49.99, "metadata": [{"plan": "pro"}]},
            "signup": {"count": 1, "sum": 1.0, "metadata": []},
        })
    );
    assert!(body(&answer).contains(r#""sum":1.0"#), "whole sums keep .0");
}

#[test]
fn decimal_sums_are_exact_over_http() {
    let server = Server::start(&[]);
    server.record(r#"{"metric":"m","value":0.1}"#);
    server.record(r#"{"metric":"m","value":0.2}"#);
    let answer = request(server.addr, &get("/metrics"));
    assert!(body(&answer).contains(r#""sum":0.3,"#), "{answer}");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    for i in 0..20 {
        let body = format!(r#"{{"metric":"k","value":{i}}}"#);
        stream.write_all(keep_alive_post(&body).as_bytes()).unwrap();
        let answers = read_answers(&mut stream, 1);
        assert_eq!(status(&answers[0]), 200);
    }
    assert_eq!(server.metrics()["k"]["count"], 20);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    let mut batch = String::new();
    for i in 0..50 {
        batch += &keep_alive_post(&format!(r#"{{"metric":"p","value":{i}}}"#));
        batch += "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    }
    batch += "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n";
    stream.write_all(batch.as_bytes()).unwrap();
    let answers = read_answers(&mut stream, 101);
    for (i, pair) in answers[..100].chunks(2).enumerate() {
        assert_eq!(status(&pair[0]), 200);
        let metrics: serde_json::Value =
            serde_json::from_str(body(&pair[1])).unwrap();
        // Each GET sees exactly the records sent before it.
        assert_eq!(metrics["p"]["count"], i + 1);
    }
    assert_eq!(status(&answers[100]), 404);
}

#[test]
fn requests_split_into_single_bytes_are_understood() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    stream.set_nodelay(true).unwrap();
    let chunked = "POST /record HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\n{\"met\r\nb\r\nric\":\"one\"}\r\n0\r\n\r\n";
    let text = keep_alive_post(r#"{"metric":"one","value":2}"#) + chunked;
    for byte in text.as_bytes() {
        stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let answers = read_answers(&mut stream, 2);
    assert!(answers.iter().all(|a| status(a) == 200), "{answers:?}");
    assert_eq!(server.metrics()["one"]["sum"], 3.0);
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_accepted() {
    let server = Server::start(&[]);
    let request = "POST /record HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n\
                   f;note=x\r\n{\"metric\":\"c\",\"\r\n9\r\nvalue\":7}\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let answer = request_text(&server, request);
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(server.metrics()["c"]["sum"], 7.0);
}

fn request_text(server: &Server, text: &str) -> String {
    request(server.addr, text)
}

#[test]
fn expect_continue_gets_100_before_the_body_is_sent() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    let body = r#"{"metric":"e"}"#;
    let head = format!(
        "POST /record HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(status(&read_answers(&mut stream, 1)[0]), 200);
}

#[test]
fn expect_continue_over_the_limit_gets_413_at_once() {
    let server = Server::start(&["--max-body-bytes", "100"]);
    let mut stream = connect(server.addr);
    let head = "POST /record HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
                Content-Length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_to_close(&mut stream);
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(body(&answer).contains("100-byte limit"), "{answer}");
}

#[test]
fn curl_expect_continue_and_chunked_uploads_work() {
    let server = Server::start(&[]);
    let big_meta = "x".repeat(2000);
    let record =
        format!(r#"{{"metric":"curl","metadata":{{"pad":"{big_meta}"}}}}"#);
    // curl sends Expect: 100-continue for bodies over 1 KiB.
    util::curl(&[&server.url("/record"), "-d", &record]);
    util::curl(&[
        &server.url("/record"),
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        r#"{"metric":"curl"}"#,
    ]);
    assert_eq!(server.metrics()["curl"]["count"], 2);
}

#[test]
fn http_1_0_is_answered_and_closed_unless_kept_alive() {
    let server = Server::start(&[]);
    let answer = request(server.addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status(&answer), 200);
    assert!(answer.contains("Connection: close"), "{answer}");

    let mut stream = connect(server.addr);
    let keep = "GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    stream.write_all(keep.as_bytes()).unwrap();
    let first = read_answers(&mut stream, 1);
    assert!(first[0].contains("Connection: keep-alive"), "{first:?}");
    stream.write_all(keep.as_bytes()).unwrap();
    assert_eq!(status(&read_answers(&mut stream, 1)[0]), 200);
}

#[test]
fn head_answers_like_get_without_a_body() {
    let server = Server::start(&[]);
    server.record(r#"{"metric":"h"}"#);
    let full = request(server.addr, &get("/metrics"));
    let head = request(
        server.addr,
        "HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let length = |a: &str| {
        a.lines().find(|l| l.starts_with("Content-Length")).unwrap().to_owned()
    };
    assert_eq!(length(&head), length(&full));
    assert!(head.ends_with("\r\n\r\n"), "no body after HEAD: {head}");
}

#[test]
fn every_error_has_its_status_and_a_json_body() {
    let server =
        Server::start(&["--max-body-bytes", "200", "--max-head-bytes", "512"]);
    let cases = [
        (post("/record", "not json"), 400, "not valid JSON"),
        (post("/record", r#"{"value":1}"#), 400, "'metric' is required"),
        (
            post("/record", r#"{"metric":"m","value":"1"}"#),
            400,
            "'value' must be a number",
        ),
        (
            post("/record", r#"{"metric":"m","metadata":[]}"#),
            400,
            "'metadata' must be",
        ),
        (get("/nope"), 404, "no such path"),
        (get("/record"), 405, "accepts only POST"),
        (post("/metrics", "{}"), 405, "GET and HEAD"),
        (
            "POST /record HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            411,
            "Content-Length",
        ),
        (post("/record", &"x".repeat(300)), 413, "200-byte limit"),
        (get("/dashboard"), 426, "WebSocket"),
        (
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(600)),
            431,
            "512-byte limit",
        ),
        ("BAD\0REQUEST\r\n\r\n".into(), 400, "malformed request head"),
    ];
    for (request_text, expected, words) in cases {
        let answer = request(server.addr, &request_text);
        assert_eq!(status(&answer), expected, "{request_text:?} -> {answer}");
        let json: serde_json::Value = serde_json::from_str(body(&answer))
            .unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(json["status"], "error");
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(words), "{expected}: {message}");
    }
    let allow = request(server.addr, &get("/record"));
    assert!(allow.contains("Allow: POST\r\n"), "{allow}");
    assert!(
        server.metrics().as_object().unwrap().is_empty(),
        "refusals changed state"
    );
}

#[test]
fn a_bad_body_keeps_the_connection_but_bad_framing_closes_it() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr);
    stream.write_all(keep_alive_post("{oops").as_bytes()).unwrap();
    assert_eq!(status(&read_answers(&mut stream, 1)[0]), 400);
    stream
        .write_all(keep_alive_post(r#"{"metric":"after"}"#).as_bytes())
        .unwrap();
    assert_eq!(status(&read_answers(&mut stream, 1)[0]), 200);

    let mut stream = connect(server.addr);
    let both = "POST /record HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\
                Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    stream.write_all(both.as_bytes()).unwrap();
    let answer = read_to_close(&mut stream);
    assert_eq!(status(&answer), 400);
    assert!(answer.contains("Connection: close"), "{answer}");

    let mut stream = connect(server.addr);
    let bad_chunk = "POST /record HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    stream.write_all(bad_chunk.as_bytes()).unwrap();
    assert_eq!(status(&read_to_close(&mut stream)), 400);
    // Other connections are unaffected.
    assert_eq!(server.metrics()["after"]["count"], 1);
}

#[test]
fn chunked_bodies_over_the_limit_are_refused() {
    let server = Server::start(&["--max-body-bytes", "64"]);
    let mut text = String::from(
        "POST /record HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..5 {
        text += "10\r\n0123456789abcdef\r\n";
    }
    text += "0\r\n\r\n";
    let answer = request(server.addr, &text);
    assert_eq!(status(&answer), 413, "{answer}");
}

#[test]
fn a_slow_request_gets_408_and_an_idle_connection_is_closed_quietly() {
    let server =
        Server::start(&["--request-timeout", "0.5", "--idle-timeout", "1"]);
    let mut slow = connect(server.addr);
    slow.write_all(b"POST /record HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut slow);
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut idle = connect(server.addr);
    let started = Instant::now();
    assert_eq!(read_to_close(&mut idle), "", "idle close sends nothing");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[test]
fn connections_over_the_limit_get_503_and_others_are_served() {
    let server = Server::start(&["--max-connections", "3"]);
    let held: Vec<TcpStream> = (0..3).map(|_| connect(server.addr)).collect();
    // Accepts happen in order, so once this answer arrives all three are in.
    let mut probe = connect(server.addr);
    let answer = read_to_close(&mut probe);
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(body(&answer).contains("limit of 3 connections"), "{answer}");
    drop(held);
    let counted =
        "metricast_http_requests_total{route=\"other\",status=\"503\"} ";
    assert!(util::eventually(Duration::from_secs(5), || {
        let mut stream = connect(server.addr);
        let _ = stream.write_all(get("/metrics").as_bytes());
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }));
    let text = util::curl(&[&server.url("/metrics?format=prometheus")]);
    let refusals: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(counted)?.parse().ok())
        .unwrap_or(0);
    assert!(refusals >= 1, "503 not counted:\n{text}");
}

#[test]
fn a_client_that_never_reads_does_not_grow_the_server() {
    let server = Server::start(&[]);
    for i in 0..100 {
        server.record(&format!(
            r#"{{"metric":"m{i}","metadata":{{"pad":"{}"}}}}"#,
            "p".repeat(900)
        ));
    }
    let before = server.rss_kib();
    let mut greedy = connect(server.addr);
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let one = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    // Each batch asks for about 10 MB of answers; the server must stop
    // reading once its output is backed up rather than buffer them all, so
    // the kernel buffers fill and the writes here stall.
    let mut sent = 0;
    for _ in 0..10_000 {
        if greedy.write_all(one.as_bytes()).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 10_000,
        "the server kept reading without the client reading"
    );
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "server grew by {grown} KiB");
    assert_eq!(status(&request(server.addr, &get("/metrics"))), 200);
}

#[test]
fn sigterm_finishes_owed_answers_and_exits_cleanly() {
    let mut server = Server::start(&[]);
    let mut idle = connect(server.addr);
    let status_code = server.terminate();
    assert!(status_code.success(), "{status_code:?}");
    assert_eq!(read_to_close(&mut idle), "");
    let log = server.log();
    assert!(log.contains("stopping"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting");
}

#[test]
fn command_line_help_version_and_bad_options() {
    let bin = env!("CARGO_BIN_EXE_metricast");
    let help = util::run_tool(bin, &["--help"], "cargo build");
    let text = String::from_utf8(help.stdout).unwrap();
    for option in ["--listen", "--keepalive", "--metadata-limit", "METRICAST_"]
    {
        assert!(text.contains(option), "{option} missing from help");
    }
    let version = util::run_tool(bin, &["--version"], "cargo build");
    assert!(String::from_utf8(version.stdout)
        .unwrap()
        .starts_with("metricast "));
    let bad = util::run_tool(bin, &["--keepalive", "never"], "cargo build");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8(bad.stderr).unwrap().contains("--keepalive"));
}

#[test]
fn environment_variables_configure_the_server() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_metricast"))
        .env("METRICAST_LISTEN", "not an address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("METRICAST_LISTEN"));
}

#[test]
fn metadata_keeps_the_configured_number_of_newest_entries() {
    let server = Server::start(&["--metadata-limit", "2"]);
    for i in 0..5 {
        server.record(&format!(r#"{{"metric":"m","metadata":{{"i":{i}}}}}"#));
    }
    server.record(r#"{"metric":"m","metadata":null}"#);
    let metric = &server.metrics()["m"];
    assert_eq!(metric["count"], 6);
    assert_eq!(metric["metadata"], serde_json::json!([{"i": 3}, {"i": 4}]));
}

#[test]
fn clients_reading_a_large_state_at_once_share_one_copy_of_it() {
    let server = Server::start(&["--max-metrics", "100000"]);
    let records: String = (0..20_000)
        .map(|i| {
            format!(
                "{{\"metric\":\"series_{i:05}\",\"metadata\":{{\"i\":{i}}}}}\n"
            )
        })
        .collect();
    let file = std::env::temp_dir()
        .join(format!("metricast-large-{}.ndjson", std::process::id()));
    std::fs::write(&file, records).unwrap();
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_metricast"))
        .args(["replay", file.to_str().unwrap(), "--url", &server.url("")])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let size = body(&request(server.addr, &get("/metrics"))).len();
    assert!(size > 1_000_000, "state is only {size} bytes");

    let before = server.rss_kib();
    // Each reader asks for four copies and reads none, so every answer
    // stays queued in the server at once.
    let readers: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut stream = connect(server.addr);
            let asks = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(4);
            stream.write_all(asks.as_bytes()).unwrap();
            stream
        })
        .collect();
    // The last reader's answers are queued once a request after it is
    // answered, since the loop serves connections in turn.
    assert_eq!(status(&request(server.addr, &get("/metrics"))), 200);
    let grown = server.rss_kib().saturating_sub(before);
    let copies = 64 * 4 * size / 1024;
    assert!(
        grown < 24 * 1024,
        "server grew by {grown} KiB; one copy each would be {copies} KiB"
    );
    drop(readers);
}

#[test]
fn thousands_of_pipelined_requests_in_one_write_are_all_answered() {
    let server = Server::start(&["--idle-timeout", "5"]);
    let mut stream = connect(server.addr);
    let one = keep_alive_post(r#"{"metric":"m"}"#);
    // Far more answers than fit below the output high water at once: the
    // connection must come back for the rest without any new input.
    let count = 5_000;
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let batch = one.repeat(count);
        std::thread::spawn(move || stream.write_all(batch.as_bytes()))
    };
    let answers = read_answers(&mut stream, count);
    writer.join().unwrap().unwrap();
    assert!(answers.iter().all(|a| status(a) == 200));
    assert_eq!(server.metrics()["m"]["count"], count);
}

#[test]
fn head_error_answers_have_no_body_so_the_next_answer_follows_directly() {
    let server = Server::start(&[]);
    for path in ["/nope", "/record", "/dashboard", "/metrics?format=xml"] {
        let text = format!(
            "HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n\
             GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        let answers = request(server.addr, &text);
        let (first, rest) = answers.split_once("\r\n\r\n").unwrap();
        assert!(!first.starts_with("HTTP/1.1 200"), "{path}: {first}");
        assert!(
            rest.starts_with("HTTP/1.1 200 OK"),
            "{path}: body after HEAD: {rest}"
        );
    }
    let dashboard = request(
        server.addr,
        "HEAD /dashboard HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&dashboard), 426, "{dashboard}");
}
