//! Security headers, bearer tokens, the dashboard origin check and log
//! redaction, against the real server.

mod util;

use std::io::Write;

use util::{body, connect, get, read_to_close, request, Server};

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// The status line of the answer to an upgrade request.
fn upgrade_status(server: &Server, path: &str, extra: &str) -> String {
    let mut stream = connect(server.addr);
    stream.write_all(upgrade(path, extra).as_bytes()).unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).unwrap();
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn every_answer_carries_the_security_headers() {
    let server = Server::start(&[]);
    for answer in [
        server.record(r#"{"metric":"m"}"#),
        server.record("oops"),
        request(server.addr, &get("/metrics")),
        request(server.addr, &get("/missing")),
    ] {
        for header in [
            "X-Content-Type-Options: nosniff\r\n",
            "Referrer-Policy: no-referrer\r\n",
            "Cache-Control: no-store\r\n",
            "Content-Security-Policy-Report-Only: default-src 'none'; frame-ancestors 'none'\r\n",
        ] {
            assert!(answer.contains(header), "{header:?} missing from {answer}");
        }
    }
}

#[test]
fn the_csp_can_be_enforced_with_its_own_policy_or_turned_off() {
    let enforced = Server::start(&[
        "--csp",
        "enforce",
        "--csp-policy",
        "default-src 'self'",
    ]);
    let answer = request(enforced.addr, &get("/metrics"));
    assert!(
        answer.contains("\r\nContent-Security-Policy: default-src 'self'\r\n"),
        "{answer}"
    );
    let off = Server::start(&["--csp", "off"]);
    let answer = request(off.addr, &get("/metrics"));
    assert!(!answer.contains("Content-Security-Policy"), "{answer}");
}

#[test]
fn a_record_token_guards_writes_but_not_reads() {
    let server = Server::start(&["--record-token", "w-t0ken"]);
    let url = server.url("/record");
    let denied = util::curl(&["-i", &url, "-d", r#"{"metric":"m"}"#]);
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(denied.contains("WWW-Authenticate: Bearer"), "{denied}");
    let json: serde_json::Value = serde_json::from_str(body(&denied)).unwrap();
    assert_eq!(json["status"], "error");
    let wrong = util::curl(&[
        "-i",
        &url,
        "-H",
        "Authorization: Bearer w-t0keN",
        "-d",
        "{}",
    ]);
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let ok = util::curl(&[
        &url,
        "-H",
        "Authorization: Bearer w-t0ken",
        "-d",
        r#"{"metric":"m"}"#,
    ]);
    assert_eq!(ok, r#"{"status":"recorded"}"#);
    assert_eq!(
        server.metrics()["m"]["count"],
        1,
        "only the authorised record counts"
    );
    assert!(upgrade_status(&server, "/dashboard", "").contains("101"));
}

#[test]
fn a_read_token_guards_metrics_and_dashboards_by_header_or_query() {
    let server = Server::start(&["--read-token", "r-t0ken"]);
    let metrics = server.url("/metrics");
    assert!(util::curl(&["-i", &metrics]).starts_with("HTTP/1.1 401"));
    let ok =
        util::curl(&["-i", "-H", "Authorization: Bearer r-t0ken", &metrics]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let ok = util::curl(&["-i", &format!("{metrics}?access_token=r-t0ken")]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(upgrade_status(&server, "/dashboard", "").contains("401"));
    assert!(upgrade_status(&server, "/dashboard?access_token=r-t0ken", "")
        .contains("101"));
    let header = "Authorization: Bearer r-t0ken\r\n";
    assert!(upgrade_status(&server, "/dashboard", header).contains("101"));
    // Writes stay open without a record token.
    assert!(server.record(r#"{"metric":"m"}"#).contains("200 OK"));
}

#[test]
fn only_allowed_browser_origins_may_open_a_dashboard() {
    let server = Server::start(&["--allowed-origin", "https://dash.example"]);
    let evil = upgrade_status(
        &server,
        "/dashboard",
        "Origin: https://evil.example\r\n",
    );
    assert!(evil.contains("403"), "{evil}");
    let good = upgrade_status(
        &server,
        "/dashboard",
        "Origin: https://dash.example\r\n",
    );
    assert!(good.contains("101"), "{good}");
    assert!(
        upgrade_status(&server, "/dashboard", "").contains("101"),
        "non-browser clients pass"
    );
}

#[test]
fn the_log_never_shows_tokens_or_email_addresses() {
    let server = Server::start(&[
        "--record-token",
        "very-s3cret",
        "--read-token",
        "read-s3cret",
    ]);
    request(server.addr, &get("/users/alice.smith@example.com/profile"));
    request(
        server.addr,
        &get("/nope?access_token=read-s3cret&user=bob@example.org"),
    );
    let mut stream = connect(server.addr);
    let guess =
        "POST /record HTTP/1.1\r\nAuthorization: Bearer guessed-token-123\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    stream.write_all(guess.as_bytes()).unwrap();
    assert!(read_to_close(&mut stream).starts_with("HTTP/1.1 401"));
    let bad_expect =
        "POST /record HTTP/1.1\r\nExpect: mail carol@example.net\r\n\
                      Content-Length: 2\r\n\r\n{}";
    let answer = request(server.addr, bad_expect);
    assert!(answer.starts_with("HTTP/1.1 417"), "{answer}");
    // The log is collected from the server's stderr as it arrives.
    util::eventually(std::time::Duration::from_secs(5), || {
        server.log().contains("417")
    });
    let log = server.log();
    for secret in [
        "very-s3cret",
        "read-s3cret",
        "guessed-token-123",
        "example.com",
        "example.org",
        "example.net",
    ] {
        assert!(!log.contains(secret), "{secret:?} reached the log:\n{log}");
    }
    assert!(log.contains("/users/[email]/profile"), "{log}");
    assert!(log.contains("[email]"), "{log}");
}
