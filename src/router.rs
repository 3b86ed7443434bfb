//! Maps a complete request to its answer.

use tungstenite::handshake::derive_accept_key;

use crate::app::App;
use crate::http::{self, Answer, Head, HttpError, Method, Persistence, Status};
use crate::output::Output;
use crate::prometheus::{self, Format};
use crate::wire;

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// An answer was written.
    Answered,
    /// The `101` answer was written; the connection becomes a dashboard.
    Upgrade,
}

/// A refusal with the extra header lines that go with it.
type Refused = (HttpError, &'static str);

/// The paths the server answers.
pub const PATHS: &[&str] = &["/record", "/metrics", "/dashboard"];

/// The route label of a path, for the server's own counters.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/record" => "/record",
        "/metrics" => "/metrics",
        "/dashboard" => "/dashboard",
        _ => "other",
    }
}

/// Handles one request, writing its answer into `out`.
pub fn route(
    app: &mut App,
    head: &Head,
    body: &[u8],
    persistence: Persistence,
    out: &mut Output,
) -> Routed {
    let route = route_label(&head.path);
    let result = match route {
        "/record" => record(app, head, body, persistence, out),
        "/metrics" => metrics(app, head, persistence, out),
        "/dashboard" => dashboard(app, head, out),
        _ => Err((
            HttpError::request(
                Status::NotFound,
                format!(
                    "no such path {:?}; try POST /record, GET /metrics or \
                     GET /dashboard (WebSocket)",
                    head.path
                ),
            ),
            "",
        )),
    };
    match result {
        Ok(routed) => {
            let status = if routed == Routed::Upgrade { 101 } else { 200 };
            app.stats.answered(route, status);
            routed
        }
        Err((error, extra)) => {
            log::debug!("refused {} {}: {error}", method_name(head), head.path);
            app.stats.answered(route, error.status.code());
            let common = &app.security.headers;
            let head_only = head.method == Method::Head;
            let out = out.buf();
            http::write_error(
                out,
                &error,
                persistence,
                extra,
                common,
                head_only,
            );
            Routed::Answered
        }
    }
}

fn method_name(head: &Head) -> &'static str {
    match head.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Other => "(other method)",
    }
}

fn wrong_method(path: &str, allowed: &'static str) -> Refused {
    let error = HttpError::request(
        Status::MethodNotAllowed,
        format!("{path} accepts only {allowed}"),
    );
    let header = match allowed {
        "POST" => "Allow: POST\r\n",
        "GET" => "Allow: GET\r\n",
        _ => "Allow: GET, HEAD\r\n",
    };
    (error, header)
}

fn unauthorized(error: HttpError) -> Refused {
    (error, "WWW-Authenticate: Bearer realm=\"metricast\"\r\n")
}

fn record(
    app: &mut App,
    head: &Head,
    body: &[u8],
    persistence: Persistence,
    out: &mut Output,
) -> Result<Routed, Refused> {
    if head.method != Method::Post {
        return Err(wrong_method("/record", "POST"));
    }
    app.security.check_record(head).map_err(unauthorized)?;
    app.record(body).map_err(|refusal| {
        (HttpError::request(Status::BadRequest, refusal.to_string()), "")
    })?;
    let common = &app.security.headers;
    let answer = Answer::default();
    http::write_answer(
        out.buf(),
        Status::Ok,
        persistence,
        answer,
        common,
        wire::RECORDED_BODY,
    );
    Ok(Routed::Answered)
}

fn metrics(
    app: &mut App,
    head: &Head,
    persistence: Persistence,
    out: &mut Output,
) -> Result<Routed, Refused> {
    let head_only = match head.method {
        Method::Get => false,
        Method::Head => true,
        _ => return Err(wrong_method("/metrics", "GET and HEAD")),
    };
    app.security.check_read(head).map_err(unauthorized)?;
    let format = prometheus::negotiate(&head.query, head.accept.as_deref())
        .map_err(|e| (HttpError::request(Status::BadRequest, e), ""))?;
    // Caches must keep JSON and text apart.
    let extra = "Vary: Accept\r\n";
    let common = &app.security.headers;
    let content_type = match format {
        Format::Json => {
            let answer =
                Answer { head_only, extra_headers: extra, content_type: None };
            // The cached body is queued by reference: a crowd reading a
            // large state at once shares one copy of it.
            let body = app.store.json();
            let len = body.len();
            http::write_head(
                out.buf(),
                Status::Ok,
                persistence,
                answer,
                common,
                len,
            );
            if !head_only {
                out.push_shared(body);
            }
            return Ok(Routed::Answered);
        }
        Format::Text => prometheus::TEXT_TYPE,
        Format::OpenMetrics => prometheus::OPENMETRICS_TYPE,
    };
    let body = prometheus::encode(&app.store, &app.stats, format);
    let answer = Answer {
        head_only,
        extra_headers: extra,
        content_type: Some(content_type),
    };
    let len = body.len();
    http::write_head(out.buf(), Status::Ok, persistence, answer, common, len);
    if !head_only {
        out.push_owned(body);
    }
    Ok(Routed::Answered)
}

fn dashboard(
    app: &App,
    head: &Head,
    out: &mut Output,
) -> Result<Routed, Refused> {
    match head.method {
        Method::Get => {}
        // HEAD gets what a plain GET gets, without the body.
        Method::Head => return Err(needs_websocket()),
        _ => return Err(wrong_method("/dashboard", "GET")),
    }
    app.security.check_read(head).map_err(unauthorized)?;
    app.security.check_origin(head).map_err(|e| (e, ""))?;
    let accept = accept_key(head)?;
    let _ = std::io::Write::write_fmt(
        out.buf(),
        format_args!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ),
    );
    Ok(Routed::Upgrade)
}

/// The 426 for a request to `/dashboard` that is not an upgrade.
fn needs_websocket() -> Refused {
    (
        HttpError::request(
            Status::UpgradeRequired,
            "/dashboard is a WebSocket; connect with a WebSocket client \
             (Connection: Upgrade, Upgrade: websocket)",
        ),
        "Upgrade: websocket\r\nConnection: Upgrade\r\n",
    )
}

/// Checks the upgrade headers and derives `Sec-WebSocket-Accept`.
fn accept_key(head: &Head) -> Result<String, Refused> {
    let Some(upgrade) = &head.upgrade else {
        return Err(needs_websocket());
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
