//! The dashboard and the metrics as third-party clients see them: a Python
//! `websockets` script following `/dashboard`, and curl recording and
//! reading.

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use util::python::PythonDashboard;
use util::Server;

/// A message as sent, with the value's number text kept as written.
#[derive(Deserialize)]
struct Message {
    event: String,
    metric: Option<String>,
    value: Option<Box<RawValue>>,
    data: Option<Value>,
}

/// A field of a JSON message, where a `null` is told apart from a missing
/// field (which `Option` in a derived struct would merge).
fn field(line: &str, name: &str) -> Option<Value> {
    let whole: Value = serde_json::from_str(line).expect("message JSON");
    whole.get(name).cloned()
}

fn parse_message(line: &str) -> Message {
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad message {line:?}: {e}"))
}

/// One metric of `GET /metrics`, with the sum's number text kept as
/// written.
#[derive(Deserialize)]
struct Metric {
    count: u64,
    sum: Box<RawValue>,
    metadata: Vec<Value>,
}

fn curl_metrics(server: &Server) -> BTreeMap<String, Metric> {
    let body = util::curl(&[&server.url("/metrics")]);
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("bad /metrics answer {body:?}: {e}"))
}

fn curl_record(server: &Server, body: &str) {
    let answer = util::curl(&["--data-binary", body, &server.url("/record")]);
    assert_eq!(answer, r#"{"status":"recorded"}"#, "recording {body}");
}

#[test]
fn a_python_dashboard_gets_the_snapshot_then_every_curl_record_in_order() {
    let server = Server::start(&[]);
    curl_record(&server, r#"{"metric": "before", "value": 2.5}"#);
    let dashboard = PythonDashboard::subscribe(
        &server,
        &["--expect", "4", "--timeout", "20"],
    );

    let odd_name = "caf\u{e9} \"na\u{ef}ve\" \u{2713} \\ \u{1f680}";
    let odd_record = json!({
        "metric": odd_name,
        "value": 12.5,
        "metadata": {"plan": "pro", "note": "say \"hi\"", "tags": ["\u{e9}t\u{e9}", 1]},
    });
    let records = [
        r#"{"metric": "signup"}"#.to_owned(),
        odd_record.to_string(),
        r#"{"metric": "signup", "value": 3, "metadata": null}"#.to_owned(),
        r#"{"metric": "before", "value": -0.5, "metadata": {"depth": {"a": {"b": [true, null]}}}}"#
            .to_owned(),
    ];
    for record in &records {
        curl_record(&server, record);
    }

    let messages = dashboard.finish(Duration::from_secs(30));
    assert_eq!(messages.len(), 5, "{messages:#?}");
    let snapshot = parse_message(&messages[0]);
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(
        snapshot.data,
        Some(json!({"before": {"count": 1, "sum": 2.5, "metadata": []}})),
        "the snapshot holds what was recorded before the client connected"
    );
    let expected = [
        ("signup", "1.0", Value::Null),
        (odd_name, "12.5", odd_record["metadata"].clone()),
        ("signup", "3.0", Value::Null),
        ("before", "-0.5", json!({"depth": {"a": {"b": [true, null]}}})),
    ];
    for (line, (metric, value, metadata)) in messages[1..].iter().zip(expected)
    {
        let update = parse_message(line);
        assert_eq!(update.event, "metric_update", "{line}");
        assert_eq!(update.metric.as_deref(), Some(metric), "{line}");
        assert_eq!(
            update.value.as_ref().map(|v| v.get()),
            Some(value),
            "{line}"
        );
        assert_eq!(field(line, "metadata"), Some(metadata), "{line}");
    }

    let metrics = curl_metrics(&server);
    assert_eq!(
        metrics.keys().map(String::as_str).collect::<Vec<_>>(),
        ["before", odd_name, "signup"]
    );
    assert_eq!(metrics[odd_name].count, 1);
    assert_eq!(metrics[odd_name].metadata, [odd_record["metadata"].clone()]);
    assert_eq!(metrics["signup"].count, 2);
    assert_eq!(metrics["signup"].sum.get(), "4.0");
    assert_eq!(metrics["before"].sum.get(), "2.0");
}

#[test]
fn one_is_sent_as_one_point_zero_and_decimal_sums_are_exact() {
    let server = Server::start(&[]);
    let dashboard = PythonDashboard::subscribe(
        &server,
        &["--expect", "3", "--timeout", "20"],
    );
    curl_record(&server, r#"{"metric": "events", "value": 1}"#);
    curl_record(&server, r#"{"metric": "ratio", "value": 0.1}"#);
    curl_record(&server, r#"{"metric": "ratio", "value": 0.2}"#);

    let messages = dashboard.finish(Duration::from_secs(30));
    let values: Vec<String> = messages[1..]
        .iter()
        .map(|line| {
            parse_message(line).value.expect("a value").get().to_owned()
        })
        .collect();
    assert_eq!(values, ["1.0", "0.1", "0.2"], "{messages:#?}");

    let metrics = curl_metrics(&server);
    assert_eq!(metrics["events"].sum.get(), "1.0");
    // In binary floating point this would be 0.30000000000000004.
    assert_eq!(metrics["ratio"].sum.get(), "0.3");
    assert_eq!(metrics["ratio"].count, 2);
}

#[test]
fn a_python_dashboard_gets_keepalives_and_stays_connected_past_two_intervals() {
    let server = Server::start(&["--keepalive", "1"]);
    let started = Instant::now();
    // Three keepalives span more than two intervals, the silence after
    // which the server closes a client; the library's automatic pongs must
    // keep this one open.
    let dashboard = PythonDashboard::subscribe(
        &server,
        &["--keepalives", "3", "--timeout", "15"],
    );
    let messages = dashboard.finish(Duration::from_secs(20));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "keepalives came too fast"
    );
    assert_eq!(parse_message(&messages[0]).event, "snapshot");
    assert_eq!(messages[1..], [r#"{"event":"keepalive"}"#; 3], "{messages:#?}");
}
