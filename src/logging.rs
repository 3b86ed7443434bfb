//! Logging to standard error through one redaction step.
//!
//! Every line passes [`redact`] before it is written: log text can contain
//! what clients sent (paths, header values, error details), and neither a
//! secret nor personal data may reach the log, nor a newline that would let
//! a client forge a log line of its own.

use log::{LevelFilter, Log, Metadata, Record};

/// What replaces a secret.
const MASK: &str = "[redacted]";

struct RedactingLogger {
    inner: Box<simplelog::WriteLogger<std::io::Stderr>>,
    secrets: Vec<String>,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = redact(&record.args().to_string(), &self.secrets);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{text}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger. `secrets` are masked wherever they appear.
pub fn init(level: LevelFilter, secrets: Vec<String>) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        // tungstenite narrates every close handshake at debug level;
        // metricast logs the events that matter itself.
        .add_filter_ignore_str("tungstenite")
        .build();
    let inner = simplelog::WriteLogger::new(level, config, std::io::stderr());
    let secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    if log::set_boxed_logger(Box::new(RedactingLogger { inner, secrets }))
        .is_ok()
    {
        log::set_max_level(level);
    }
}

/// Masks secrets, bearer tokens, `access_token` values and e-mail
/// addresses, and escapes control characters.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), MASK);
    }
    let text = mask_after(&text, "bearer ", is_token_char);
    let text = mask_after(&text, "access_token=", |c| {
        !matches!(c, '&' | ' ' | '"' | '\'')
    });
    escape_controls(&mask_emails(&text))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// Masks the run of `keep` characters after each case-insensitive
/// occurrence of `marker`.
fn mask_after(text: &str, marker: &str, keep: impl Fn(char) -> bool) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = lower[rest..].find(marker) {
        let start = rest + found + marker.len();
        let start =
            start + text[start..].len() - text[start..].trim_start().len();
        let len: usize = text[start..]
            .chars()
            .take_while(|&c| keep(c))
            .map(char::len_utf8)
            .sum();
        out.push_str(&text[rest..start]);
        if len > 0 {
            out.push_str(MASK);
        }
        rest = start + len;
    }
    out.push_str(&text[rest..]);
    out
}

fn mask_emails(text: &str) -> String {
    let local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(at) = text[rest..].find('@').map(|i| rest + i) {
        let before: usize = text[rest..at]
            .chars()
            .rev()
            .take_while(|&c| local(c))
            .map(char::len_utf8)
            .sum();
        let after: usize = text[at + 1..]
            .chars()
            .take_while(|&c| domain(c))
            .map(char::len_utf8)
            .sum();
        let host = text[at + 1..at + 1 + after].trim_end_matches('.');
        let looks_like_email = before > 0
            && host
                .rsplit_once('.')
                .is_some_and(|(name, tld)| !name.is_empty() && tld.len() >= 2);
        if looks_like_email {
            out.push_str(&text[rest..at - before]);
            out.push_str("[email]");
            rest = at + 1 + host.len();
        } else {
            out.push_str(&text[rest..=at]);
            rest = at + 1;
        }
    }
    out.push_str(&text[rest..]);
    out
}

fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Line and paragraph separators break lines in some viewers, and
            // bidirectional overrides make a line read differently.
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(text: &str) -> String {
        redact(text, &["s3cr3t-token".to_owned()])
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(
            clean("from alice.b+x@mail.example.com now"),
            "from [email] now"
        );
        assert_eq!(
            clean("path \"/u/bob@example.org.\""),
            "path \"/u/[email].\""
        );
        assert_eq!(
            clean("a@b and @handle and x@localhost"),
            "a@b and @handle and x@localhost"
        );
    }

    #[test]
    fn bearer_tokens_and_access_tokens_are_masked() {
        assert_eq!(
            clean("Authorization: Bearer abc.DEF-123"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(clean("bearer    xyz"), "bearer    [redacted]");
        assert_eq!(
            clean("/metrics?a=1&access_token=p%40ss&b=2"),
            "/metrics?a=1&access_token=[redacted]&b=2"
        );
        assert_eq!(
            clean("configured s3cr3t-token leaked"),
            "configured [redacted] leaked"
        );
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let hostile = "metric\n2026-01-01T00:00:00Z [ERROR] forged\r\x1b[31m";
        let cleaned = clean(hostile);
        assert!(
            !cleaned.contains('\n')
                && !cleaned.contains('\r')
                && !cleaned.contains('\x1b')
        );
        assert_eq!(
            cleaned,
            "metric\\n2026-01-01T00:00:00Z [ERROR] forged\\r\\u{1b}[31m"
        );
        assert_eq!(clean("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let line =
            "http 127.0.0.1:5000: refused request: 413 body over 65536 bytes";
        assert_eq!(clean(line), line);
        assert_eq!(clean("café ✓"), "café ✓");
    }
}
