//! Access rules: bearer tokens for writes and reads, the dashboard origin
//! check, and the security headers every answer carries.

use crate::config::{Config, CspMode};
use crate::http::{Head, HttpError, Status};

/// The configured access rules.
#[derive(Debug, Clone, Default)]
pub struct Security {
    record_token: Option<String>,
    read_token: Option<String>,
    allowed_origins: Vec<String>,
    /// Header lines sent with every answer, each ending in CRLF.
    pub headers: String,
}

impl Security {
    /// The rules a configuration asks for.
    pub fn from_config(config: &Config) -> Security {
        let mut headers = String::from(
            "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
             Cache-Control: no-store\r\n",
        );
        let csp_header = match config.csp {
            CspMode::Off => None,
            CspMode::ReportOnly => Some("Content-Security-Policy-Report-Only"),
            CspMode::Enforce => Some("Content-Security-Policy"),
        };
        if let Some(name) = csp_header {
            headers.push_str(&format!("{name}: {}\r\n", config.csp_policy));
        }
        Security {
            record_token: config.record_token.clone(),
            read_token: config.read_token.clone(),
            allowed_origins: config.allowed_origins.clone(),
            headers,
        }
    }

    /// Checks the write token, when one is configured.
    pub fn check_record(&self, head: &Head) -> Result<(), HttpError> {
        check_token(self.record_token.as_deref(), head, false)
    }

    /// Checks the read token, when one is configured. Browsers cannot set
    /// headers on a WebSocket, so `?access_token=` is accepted too.
    pub fn check_read(&self, head: &Head) -> Result<(), HttpError> {
        check_token(self.read_token.as_deref(), head, true)
    }

    /// Checks a dashboard's `Origin` against the allowed list. Requests
    /// without an `Origin` do not come from a browser page and pass.
    pub fn check_origin(&self, head: &Head) -> Result<(), HttpError> {
        let Some(origin) = head.origin.as_deref() else { return Ok(()) };
        if self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
        Err(HttpError::request(
            Status::Forbidden,
            "this page's origin may not open /dashboard; add it with \
             --allowed-origin",
        ))
    }
}

fn check_token(
    expected: Option<&str>,
    head: &Head,
    query_allowed: bool,
) -> Result<(), HttpError> {
    let Some(expected) = expected else { return Ok(()) };
    let from_header = head
        .authorization
        .as_deref()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let from_query = query_allowed
        .then(|| query_param(&head.query, "access_token"))
        .flatten();
    let presented = from_header.or(from_query);
    match presented {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => {
            Ok(())
        }
        Some(_) => Err(HttpError::request(
            Status::Unauthorized,
            "the token given does not match this server's",
        )),
        None => Err(HttpError::request(
            Status::Unauthorized,
            "this server needs a token: send Authorization: Bearer <token>",
        )),
    }
}

/// Compares two secrets in time that depends only on their lengths, so
/// that timing does not reveal how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, &b) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= usize::from(g ^ b);
    }
    diff == 0
}

/// The percent-decoded value of `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: Option<&str>, query: &str, origin: Option<&str>) -> Head {
        let text = "GET /metrics HTTP/1.1\r\n\r\n";
        let (mut head, _) =
            crate::http::parse_head(text.as_bytes(), 1024).unwrap().unwrap();
        head.authorization = auth.map(str::to_owned);
        head.query = query.to_owned();
        head.origin = origin.map(str::to_owned);
        head
    }

    fn secured() -> Security {
        let config = Config {
            record_token: Some("w-secret".into()),
            read_token: Some("r/secret".into()),
            allowed_origins: vec!["https://dash.example".into()],
            ..Config::default()
        };
        Security::from_config(&config)
    }

    #[test]
    fn tokens_come_from_the_header_or_for_reads_the_query() {
        let s = secured();
        assert!(s
            .check_record(&head(Some("Bearer w-secret"), "", None))
            .is_ok());
        assert!(s
            .check_record(&head(Some("bearer  w-secret "), "", None))
            .is_ok());
        let wrong = s.check_record(&head(Some("Bearer w-secreT"), "", None));
        assert_eq!(wrong.unwrap_err().status, Status::Unauthorized);
        assert!(s
            .check_record(&head(None, "access_token=w-secret", None))
            .is_err());
        assert!(s
            .check_read(&head(None, "x=1&access_token=r%2Fsecret", None))
            .is_ok());
        assert!(s.check_read(&head(Some("Basic r/secret"), "", None)).is_err());
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let open = Security::from_config(&Config::default());
        assert!(open.check_record(&head(None, "", None)).is_ok());
        assert!(open.check_read(&head(None, "", None)).is_ok());
        assert!(open
            .check_origin(&head(None, "", Some("https://evil")))
            .is_ok());
    }

    #[test]
    fn only_listed_browser_origins_may_open_dashboards() {
        let s = secured();
        assert!(s
            .check_origin(&head(None, "", Some("https://dash.example")))
            .is_ok());
        assert!(s.check_origin(&head(None, "", None)).is_ok());
        let err = s.check_origin(&head(None, "", Some("https://evil.example")));
        assert_eq!(err.unwrap_err().status, Status::Forbidden);
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn headers_follow_the_csp_mode() {
        let mut config = Config::default();
        assert!(Security::from_config(&config).headers.contains(
            "Content-Security-Policy-Report-Only: default-src 'none'"
        ));
        config.csp = CspMode::Enforce;
        config.csp_policy = "default-src 'self'".into();
        let headers = Security::from_config(&config).headers;
        assert!(headers
            .contains("\r\nContent-Security-Policy: default-src 'self'\r\n"));
        config.csp = CspMode::Off;
        assert!(!Security::from_config(&config)
            .headers
            .contains("Security-Policy"));
    }
}
