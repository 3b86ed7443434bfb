//! Command-line and environment settings.
//!
//! Every option can also come from `METRICAST_<NAME>` (for `--max-body-bytes`
//! that is `METRICAST_MAX_BODY_BYTES`); a flag on the command line wins.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Interval between dashboard keepalives.
    pub keepalive: Duration,
    /// Metadata objects kept per metric.
    pub metadata_limit: usize,
    /// Most distinct metrics held.
    pub max_metrics: usize,
    /// Most open connections, HTTP and dashboards together.
    pub max_connections: usize,
    /// Largest request head, in bytes.
    pub max_head_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Time allowed for a request to arrive once it has begun.
    pub request_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Bytes a dashboard may fall behind before its queued updates are
    /// dropped in favour of a fresh snapshot.
    pub max_dashboard_lag: usize,
    /// How long broadcasts gather before dashboards are written to.
    pub dashboard_flush: Duration,
    /// Log verbosity.
    pub log_level: LevelFilter,
    /// Bearer token `POST /record` requires, if any.
    pub record_token: Option<String>,
    /// Bearer token reads (`/metrics`, `/dashboard`) require, if any.
    pub read_token: Option<String>,
    /// Origins a browser may open `/dashboard` from; empty allows any.
    pub allowed_origins: Vec<String>,
    /// How the Content-Security-Policy header is sent.
    pub csp: CspMode,
    /// The Content-Security-Policy itself.
    pub csp_policy: String,
}

/// How the Content-Security-Policy header is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CspMode {
    /// Not sent.
    Off,
    /// Sent as `Content-Security-Policy-Report-Only`.
    ReportOnly,
    /// Sent as `Content-Security-Policy`.
    Enforce,
}

/// The default policy: metricast serves data, never pages, so nothing may
/// load or frame it.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            keepalive: Duration::from_secs(30),
            metadata_limit: 100,
            max_metrics: 10_000,
            max_connections: 10_000,
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_dashboard_lag: 1024 * 1024,
            dashboard_flush: Duration::ZERO,
            log_level: LevelFilter::Info,
            record_token: None,
            read_token: None,
            allowed_origins: Vec::new(),
            csp: CspMode::ReportOnly,
            csp_policy: DEFAULT_CSP.to_owned(),
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Serve(Box<Config>),
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
}

/// A setting that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see metricast --help)", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The options, their value names and help lines, in help order.
const OPTIONS: &[(&str, &str, &str)] = &[
    ("listen", "ADDR", "address to listen on [127.0.0.1:8080]; port 0 picks a free port"),
    ("keepalive", "SECS", "seconds between dashboard keepalives [30]; silent dashboards are closed after two"),
    ("metadata-limit", "N", "metadata objects kept per metric [100]"),
    ("max-metrics", "N", "most distinct metric names held [10000]"),
    ("max-connections", "N", "most open connections, HTTP and dashboards [10000]"),
    ("max-head-bytes", "N", "largest request head [16384]"),
    ("max-body-bytes", "N", "largest request body [65536]"),
    ("request-timeout", "SECS", "time for a started request to arrive [10]"),
    ("idle-timeout", "SECS", "time an idle keep-alive connection stays open [60]"),
    ("max-dashboard-lag", "BYTES", "output a dashboard may fall behind before it is resynced [1048576]"),
    ("dashboard-flush-ms", "MS", "how long updates gather before dashboards are written to; 0 writes every loop turn [0]"),
    ("log-level", "LEVEL", "off, error, warn, info, debug or trace [info]"),
    ("record-token", "TOKEN", "require Authorization: Bearer TOKEN on POST /record [none]"),
    ("read-token", "TOKEN", "require the bearer TOKEN (or ?access_token=) on /metrics and /dashboard [none]"),
    ("allowed-origin", "ORIGIN", "a browser Origin allowed on /dashboard; repeatable, comma-separated in the environment [any]"),
    ("csp", "MODE", "Content-Security-Policy header: off, report-only or enforce [report-only]"),
    ("csp-policy", "POLICY", "the policy sent [default-src 'none'; frame-ancestors 'none']"),
];

/// The `--help` text.
pub fn help() -> String {
    let mut text = String::from(
        "metricast: a real-time metrics server\n\n\
         Usage:\n  metricast [OPTIONS]\n  \
         metricast replay FILE [--url URL] [--window N]\n\n\
         Options (each also read from METRICAST_<NAME>, e.g. METRICAST_LISTEN):\n",
    );
    for (name, value, about) in OPTIONS {
        let flag = format!("--{name} {value}");
        text.push_str(&format!("  {flag:<26} {about}\n"));
    }
    text.push_str("  --help                     print this help\n");
    text.push_str("  --version                  print the version\n");
    text
}

/// Reads the command line (without the program name) and the environment.
pub fn parse(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut given: Vec<(&str, String)> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(ConfigError(format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        let Some((known, _, _)) = OPTIONS.iter().find(|(n, _, _)| *n == name)
        else {
            return Err(ConfigError(format!("unknown option --{name}")));
        };
        let value = match inline {
            Some(value) => value,
            None => rest.next().cloned().ok_or_else(|| {
                ConfigError(format!("--{name} needs a value"))
            })?,
        };
        given.push((known, value));
    }
    let var = |name: &str| {
        format!("METRICAST_{}", name.to_uppercase().replace('-', "_"))
    };
    let lookup = |name: &str| -> Option<(String, String)> {
        if let Some((_, v)) = given.iter().rev().find(|(n, _)| *n == name) {
            return Some((format!("--{name}"), v.clone()));
        }
        env(&var(name)).map(|v| (var(name), v))
    };
    let mut config = build(lookup)?;
    let origins: Vec<String> = given
        .iter()
        .filter(|(n, _)| *n == "allowed-origin")
        .map(|(_, v)| v.clone())
        .collect();
    config.allowed_origins = if origins.is_empty() {
        let listed = env(&var("allowed-origin")).unwrap_or_default();
        listed
            .split(',')
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    } else {
        origins
    };
    Ok(Command::Serve(Box::new(config)))
}

fn build(
    lookup: impl Fn(&str) -> Option<(String, String)>,
) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    if let Some((src, v)) = lookup("listen") {
        c.listen = address(&src, &v)?;
    }
    set(&lookup, "keepalive", &mut c.keepalive, seconds)?;
    set(&lookup, "metadata-limit", &mut c.metadata_limit, count)?;
    set(&lookup, "max-metrics", &mut c.max_metrics, positive)?;
    set(&lookup, "max-connections", &mut c.max_connections, positive)?;
    set(&lookup, "max-head-bytes", &mut c.max_head_bytes, positive)?;
    set(&lookup, "max-body-bytes", &mut c.max_body_bytes, positive)?;
    set(&lookup, "request-timeout", &mut c.request_timeout, seconds)?;
    set(&lookup, "idle-timeout", &mut c.idle_timeout, seconds)?;
    set(&lookup, "max-dashboard-lag", &mut c.max_dashboard_lag, positive)?;
    set(&lookup, "dashboard-flush-ms", &mut c.dashboard_flush, millis)?;
    set(&lookup, "log-level", &mut c.log_level, level)?;
    set(&lookup, "record-token", &mut c.record_token, token)?;
    set(&lookup, "read-token", &mut c.read_token, token)?;
    set(&lookup, "csp", &mut c.csp, csp_mode)?;
    set(&lookup, "csp-policy", &mut c.csp_policy, csp_policy)?;
    Ok(c)
}

fn set<T>(
    lookup: &impl Fn(&str) -> Option<(String, String)>,
    name: &str,
    slot: &mut T,
    convert: fn(&str) -> Result<T, &'static str>,
) -> Result<(), ConfigError> {
    if let Some((source, value)) = lookup(name) {
        *slot = convert(value.trim()).map_err(|expected| {
            ConfigError(format!(
                "invalid value {value:?} for {source}: expected {expected}"
            ))
        })?;
    }
    Ok(())
}

fn address(source: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let resolved = value.to_socket_addrs().map(|mut all| all.next());
    match resolved {
        Ok(Some(addr)) => Ok(addr),
        _ => Err(ConfigError(format!(
            "invalid value {value:?} for {source}: expected HOST:PORT, \
             e.g. 127.0.0.1:8080 or [::1]:8080"
        ))),
    }
}

fn seconds(value: &str) -> Result<Duration, &'static str> {
    const EXPECTED: &str = "a positive number of seconds, e.g. 30 or 0.5";
    let secs = f64::from_str(value).map_err(|_| EXPECTED)?;
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(EXPECTED)
    }
}

fn millis(value: &str) -> Result<Duration, &'static str> {
    match u64::from_str(value) {
        Ok(ms) if ms <= 1000 => Ok(Duration::from_millis(ms)),
        _ => Err("a whole number of milliseconds from 0 to 1000"),
    }
}

fn count(value: &str) -> Result<usize, &'static str> {
    usize::from_str(value).map_err(|_| "a whole number")
}

fn positive(value: &str) -> Result<usize, &'static str> {
    match usize::from_str(value) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a whole number above 0"),
    }
}

fn token(value: &str) -> Result<Option<String>, &'static str> {
    const EXPECTED: &str = "a token of visible characters without spaces";
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EXPECTED);
    }
    Ok(Some(value.to_owned()))
}

fn csp_mode(value: &str) -> Result<CspMode, &'static str> {
    match value {
        "off" => Ok(CspMode::Off),
        "report-only" => Ok(CspMode::ReportOnly),
        "enforce" => Ok(CspMode::Enforce),
        _ => Err("one of off, report-only, enforce"),
    }
}

fn csp_policy(value: &str) -> Result<String, &'static str> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err("a policy on one line, e.g. \"default-src 'none'\"");
    }
    Ok(value.to_owned())
}

fn level(value: &str) -> Result<LevelFilter, &'static str> {
    LevelFilter::from_str(value)
        .map_err(|_| "one of off, error, warn, info, debug, trace")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = |k: &str| {
            env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        match parse(&args, env)? {
            Command::Serve(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = serve(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.keepalive, Duration::from_secs(30));
        assert_eq!(c.metadata_limit, 100);
    }

    #[test]
    fn flags_beat_the_environment() {
        let env =
            [("METRICAST_LISTEN", "127.0.0.1:1"), ("METRICAST_KEEPALIVE", "2")];
        let c = serve(&["--listen", "127.0.0.1:0", "--metadata-limit=5"], &env)
            .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.keepalive, Duration::from_secs(2));
        assert_eq!(c.metadata_limit, 5);
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = serve(&["--keepalive", "soon"], &[]).unwrap_err();
        assert!(err.to_string().contains("--keepalive"), "{err}");
        let err = serve(&[], &[("METRICAST_MAX_BODY_BYTES", "0")]).unwrap_err();
        assert!(err.to_string().contains("METRICAST_MAX_BODY_BYTES"), "{err}");
        assert!(serve(&["--nope", "1"], &[]).is_err());
        assert!(serve(&["--listen"], &[]).is_err());
        assert!(serve(&["--record-token", "has space"], &[]).is_err());
        assert!(serve(&["--csp", "sometimes"], &[]).is_err());
    }

    #[test]
    fn allowed_origins_repeat_or_come_as_a_list() {
        let args =
            ["--allowed-origin", "https://a", "--allowed-origin=https://b"];
        let c = serve(&args, &[]).unwrap();
        assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
        let env = [("METRICAST_ALLOWED_ORIGIN", "https://a, https://c")];
        let c = serve(&[], &env).unwrap();
        assert_eq!(c.allowed_origins, ["https://a", "https://c"]);
    }
}
