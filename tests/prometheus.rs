//! Prometheus on `GET /metrics`: negotiation, `promtool check metrics`, and
//! a real Prometheus server scraping metricast.

mod util;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::Server;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,\
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn record_some(server: &Server) {
    for body in [
        r#"{"metric":"revenue","value":49.99}"#,
        r#"{"metric":"revenue","value":0.01}"#,
        r#"{"metric":"api.calls"}"#,
        r#"{"metric":"api-calls","value":-2}"#,
        r#"{"metric":"9lives"}"#,
        r#"{"metric":"quote\"back\\slash é"}"#,
        r#"{"metric":"metricast_records_accepted_total"}"#,
        // Read by Prometheus as the count of `revenue` if left as it is.
        r#"{"metric":"revenue_count"}"#,
    ] {
        assert!(server.record(body).contains("200 OK"));
    }
    assert!(server.record("not json").contains("400"));
}

#[test]
fn prometheus_accept_headers_get_the_text_format_and_curl_gets_json() {
    let server = Server::start(&[]);
    record_some(&server);
    let url = server.url("/metrics");
    let head = util::curl(&[
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("Accept: {PROMETHEUS_ACCEPT}"),
        &url,
    ]);
    assert!(
        head.contains(
            "Content-Type: application/openmetrics-text; version=1.0.0"
        ),
        "{head}"
    );
    let old = util::curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Accept: text/plain;version=0.0.4",
        &url,
    ]);
    assert!(old.contains("Content-Type: text/plain; version=0.0.4"), "{old}");
    let json = util::curl(&["-D", "-", "-o", "/dev/null", &url]);
    assert!(json.contains("Content-Type: application/json"), "{json}");
    let forced = util::curl(&[&format!("{url}?format=prometheus")]);
    assert!(forced.contains("# TYPE revenue summary\n"), "{forced}");
    let forced_json = util::curl(&[
        "-H",
        "Accept: text/plain",
        &format!("{url}?format=json"),
    ]);
    assert!(forced_json.starts_with('{'), "{forced_json}");
    let bad = util::curl(&["-w", "%{http_code}", &format!("{url}?format=xml")]);
    assert!(bad.ends_with("400"), "{bad}");
}

#[test]
fn the_exposition_passes_promtool_and_counts_the_servers_work() {
    let server = Server::start(&[]);
    record_some(&server);
    let text = util::curl(&[&server.url("/metrics?format=prometheus")]);
    assert!(text.contains("revenue_count 2\nrevenue_sum 50.0\n"), "{text}");
    assert!(text.contains("api_calls_sum -2.0\n"), "{text}");
    assert!(
        text.contains("api_calls_2_count 1\n"),
        "colliding names get a suffix: {text}"
    );
    assert!(text.contains("_9lives_count 1\n"), "{text}");
    assert!(
        text.contains("user_metricast_records_accepted_count 1\n"),
        "{text}"
    );
    assert!(text.contains("metricast_records_accepted_total 8\n"), "{text}");
    assert!(
        text.contains(
            "metricast_records_refused_total{reason=\"malformed\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("metricast_http_requests_total{route=\"/record\",status=\"400\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("metricast_connections{kind=\"http\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("metricast_process_start_time_seconds "), "{text}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); apt-get install prometheus, or run scripts/test.sh")
        });
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool found problems:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server scraping one target every second, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir()
        .join(format!("metricast-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: metricast\n    static_configs:\n\
         \x20     - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run prometheus ({e}); apt-get install prometheus, or run scripts/test.sh")
        });
    Prometheus { child, port, _dir: TempDir(dir) }
}

fn query(prometheus: &Prometheus, expr: &str) -> Option<String> {
    let url = format!("http://127.0.0.1:{}/api/v1/query", prometheus.port);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-G",
            &url,
            "--data-urlencode",
            &format!("query={expr}"),
        ])
        .output()
        .ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let value = answer["data"]["result"][0]["value"][1].as_str()?;
    Some(value.to_owned())
}

#[test]
fn a_real_prometheus_scrapes_recorded_values() {
    let server = Server::start(&[]);
    server.record(r#"{"metric":"revenue","value":49.99}"#);
    server.record(r#"{"metric":"revenue","value":0.01}"#);
    server.record(r#"{"metric":"checkout.latency","value":0.25}"#);
    let prometheus = start_prometheus(&server.addr.to_string());
    let mut seen = None;
    util::eventually(Duration::from_secs(40), || {
        seen = query(&prometheus, "revenue_sum");
        seen.is_some()
    });
    assert_eq!(seen.as_deref(), Some("50"), "Prometheus never saw revenue_sum");
    assert_eq!(query(&prometheus, "revenue_count").as_deref(), Some("2"));
    assert_eq!(
        query(&prometheus, "checkout_latency_sum").as_deref(),
        Some("0.25")
    );
    assert_eq!(
        query(&prometheus, "up{job=\"metricast\"}").as_deref(),
        Some("1")
    );
    let accepted = query(&prometheus, "metricast_records_accepted_total");
    assert_eq!(accepted.as_deref(), Some("3"));
    // Prometheus asks for OpenMetrics first, so that is what it parsed.
    assert!(server.log().contains("listening on"));
}
