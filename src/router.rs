//! Maps a complete request to its answer.

use tungstenite::handshake::derive_accept_key;

use crate::app::App;
use crate::http::{self, Answer, Head, HttpError, Method, Persistence, Status};
use crate::wire;

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// An answer was written.
    Answered,
    /// The `101` answer was written; the connection becomes a dashboard.
    Upgrade,
}

/// Handles one request, writing its answer into `out`.
pub fn route(
    app: &mut App,
    head: &Head,
    body: &[u8],
    persistence: Persistence,
    out: &mut Vec<u8>,
) -> Routed {
    let result = match head.path.as_str() {
        "/record" => record(app, head, body, persistence, out),
        "/metrics" => metrics(app, head, persistence, out),
        "/dashboard" => return dashboard(head, persistence, out),
        _ => Err(HttpError::request(
            Status::NotFound,
            format!(
                "no such path {:?}; try POST /record, GET /metrics or \
                 GET /dashboard (WebSocket)",
                head.path
            ),
        )),
    };
    if let Err(error) = result {
        let allow = match (error.status, head.path.as_str()) {
            (Status::MethodNotAllowed, "/record") => "Allow: POST\r\n",
            (Status::MethodNotAllowed, _) => "Allow: GET, HEAD\r\n",
            _ => "",
        };
        log::debug!("refused {} {}: {}", method_name(head), head.path, error);
        http::write_error(out, &error, persistence, allow);
    }
    Routed::Answered
}

fn method_name(head: &Head) -> &'static str {
    match head.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Other => "(other method)",
    }
}

fn wrong_method(path: &str, allowed: &str) -> HttpError {
    HttpError::request(
        Status::MethodNotAllowed,
        format!("{path} accepts only {allowed}"),
    )
}

fn record(
    app: &mut App,
    head: &Head,
    body: &[u8],
    persistence: Persistence,
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    if head.method != Method::Post {
        return Err(wrong_method("/record", "POST"));
    }
    app.record(body).map_err(|refusal| {
        HttpError::request(Status::BadRequest, refusal.to_string())
    })?;
    http::write_answer(
        out,
        Status::Ok,
        persistence,
        Answer::default(),
        wire::RECORDED_BODY,
    );
    Ok(())
}

fn metrics(
    app: &mut App,
    head: &Head,
    persistence: Persistence,
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    let head_only = match head.method {
        Method::Get => false,
        Method::Head => true,
        _ => return Err(wrong_method("/metrics", "GET and HEAD")),
    };
    let answer = Answer { head_only, ..Answer::default() };
    http::write_answer(out, Status::Ok, persistence, answer, app.store.json());
    Ok(())
}

fn dashboard(
    head: &Head,
    persistence: Persistence,
    out: &mut Vec<u8>,
) -> Routed {
    match accept_upgrade(head) {
        Ok(accept) => {
            let _ = std::io::Write::write_fmt(
                out,
                format_args!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ),
            );
            Routed::Upgrade
        }
        Err((error, extra)) => {
            log::debug!("refused dashboard upgrade: {error}");
            http::write_error(out, &error, persistence, extra);
            Routed::Answered
        }
    }
}

/// Checks an upgrade request and derives its `Sec-WebSocket-Accept`.
fn accept_upgrade(head: &Head) -> Result<String, (HttpError, &'static str)> {
    if head.method != Method::Get {
        return Err((wrong_method("/dashboard", "GET"), "Allow: GET\r\n"));
    }
    let Some(upgrade) = &head.upgrade else {
        return Err((
            HttpError::request(
                Status::UpgradeRequired,
                "/dashboard is a WebSocket; connect with a WebSocket client \
                 (Connection: Upgrade, Upgrade: websocket)",
            ),
            "Upgrade: websocket\r\nConnection: Upgrade\r\n",
        ));
    };
    if upgrade.version.as_deref() != Some("13") {
        return Err((
            HttpError::request(
                Status::UpgradeRequired,
                "unsupported Sec-WebSocket-Version; this server speaks 13",
            ),
            "Sec-WebSocket-Version: 13\r\n",
        ));
    }
    match upgrade.key.as_deref() {
        Some(key) if key.len() == 24 => Ok(derive_accept_key(key.as_bytes())),
        _ => Err((
            HttpError::request(
                Status::BadRequest,
                "Sec-WebSocket-Key is missing or is not 16 bytes in base64",
            ),
            "",
        )),
    }
}
