//! The Prometheus text exposition of `GET /metrics`, and the content
//! negotiation that picks it over JSON.
//!
//! The encoder is written by hand: the format is a few line shapes, the
//! state is already in hand, and a client library would bring a registry
//! and types that duplicate the store.
//!
//! Each recorded metric becomes a summary without quantiles: the
//! `<name>_count` and `<name>_sum` series. Names are made valid by mapping
//! every character outside `[a-zA-Z0-9_]` to `_`, prefixing `_` to a name
//! that starts with a digit, and `user_` to one that starts with `__`
//! (reserved by Prometheus) or `metricast_` (the server's own series). A
//! valid name is never changed; names that collide after mapping get `_2`,
//! `_3`, … in the order of their original names. A trailing `_total`,
//! `_count`, `_sum`, `_bucket` or `_created` is dropped, since Prometheus
//! reads those as series of another metric.

use std::collections::HashSet;
use std::fmt::Write;

use crate::stats::Stats;
use crate::store::Store;

/// The `Content-Type` of the 0.0.4 text format.
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `Content-Type` of OpenMetrics 1.0.
pub const OPENMETRICS_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The formats `GET /metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The JSON object of the protocol.
    Json,
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics text format 1.0.
    OpenMetrics,
}

/// Picks the format from `?format=` or, failing that, the `Accept` header.
/// JSON wins ties, so `*/*` (curl) and browsers get JSON.
pub fn negotiate(query: &str, accept: Option<&str>) -> Result<Format, String> {
    if let Some(wanted) = crate::security::query_param(query, "format") {
        return match wanted.as_str() {
            "json" => Ok(Format::Json),
            "prometheus" | "text" => Ok(Format::Text),
            "openmetrics" => Ok(Format::OpenMetrics),
            other => Err(format!(
                "unknown format {other:?}; use json, prometheus or openmetrics"
            )),
        };
    }
    let Some(accept) = accept else { return Ok(Format::Json) };
    let candidates = [
        (Format::Json, "application", "json"),
        (Format::OpenMetrics, "application", "openmetrics-text"),
        (Format::Text, "text", "plain"),
    ];
    let mut best = (Format::Json, quality(accept, "application", "json"));
    for (format, kind, sub) in &candidates[1..] {
        let q = quality(accept, kind, sub);
        if q > best.1 {
            best = (*format, q);
        }
    }
    Ok(best.0)
}

/// The quality `accept` gives to `kind/sub`, from its most specific match.
fn quality(accept: &str, kind: &str, sub: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let (k, s) = media.split_once('/').unwrap_or((media, ""));
        let specificity = match (k, s) {
            _ if k.eq_ignore_ascii_case(kind)
                && s.eq_ignore_ascii_case(sub) =>
            {
                3
            }
            _ if k.eq_ignore_ascii_case(kind) && s == "*" => 2,
            ("*", "*") => 1,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(spec, _)| specificity > spec) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// Encodes the store and the server's own counters.
pub fn encode(store: &Store, stats: &Stats, format: Format) -> Vec<u8> {
    let mut out = String::with_capacity(1024 + store.len() * 160);
    let open_metrics = format == Format::OpenMetrics;
    for ((name, count, sum), exposed) in store.iter().zip(exposed_names(store))
    {
        let text =
            format!("recorded metric \"{name}\": count and sum of its values");
        // OpenMetrics escapes double quotes in HELP; 0.0.4 does not.
        let help =
            if open_metrics { escape_label(&text) } else { escape_help(&text) };
        let _ = write!(
            out,
            "# HELP {exposed} {help}\n# TYPE {exposed} summary\n\
             {exposed}_count {count}\n{exposed}_sum {sum}\n"
        );
    }
    write_self_metrics(&mut out, store, stats, open_metrics);
    if open_metrics {
        out.push_str("# EOF\n");
    }
    out.into_bytes()
}

/// The exposed name of every metric, in the store's order.
pub fn exposed_names(store: &Store) -> Vec<String> {
    let names: Vec<&str> = store.iter().map(|(name, _, _)| name).collect();
    let mut used: HashSet<String> = names
        .iter()
        .filter(|n| is_valid_as_is(n))
        .map(|n| (*n).to_owned())
        .collect();
    names
        .iter()
        .map(|name| {
            if is_valid_as_is(name) {
                return (*name).to_owned();
            }
            let base = sanitize(name);
            let mut candidate = base.clone();
            let mut n = 2;
            while used.contains(&candidate) {
                candidate = format!("{base}_{n}");
                n += 1;
            }
            used.insert(candidate.clone());
            candidate
        })
        .collect()
}

fn is_valid_as_is(name: &str) -> bool {
    sanitize(name) == name
}

fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if out.starts_with("__") || out.starts_with("metricast_") {
        out.insert_str(0, "user_");
    }
    // Prometheus reads these endings as series of another metric (`a_count`
    // would be taken for the count of a summary `a`), so they are dropped.
    for suffix in RESERVED_SUFFIXES {
        if out.len() > suffix.len() && out.ends_with(suffix) {
            out.truncate(out.len() - suffix.len());
            break;
        }
    }
    out
}

/// Name endings that Prometheus gives a meaning of its own.
const RESERVED_SUFFIXES: [&str; 5] =
    ["_total", "_count", "_sum", "_bucket", "_created"];

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    escape_help(text).replace('"', "\\\"")
}

/// Writes one counter family; `samples` are label sets and values.
fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    open_metrics: bool,
    samples: &[(String, u64)],
) {
    // OpenMetrics names the family without `_total`; 0.0.4 names it after
    // the sample.
    let family =
        if open_metrics { name.to_owned() } else { format!("{name}_total") };
    let _ = write!(out, "# HELP {family} {help}\n# TYPE {family} counter\n");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}_total{labels} {value}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn plain(value: u64) -> Vec<(String, u64)> {
    vec![(String::new(), value)]
}

fn write_self_metrics(
    out: &mut String,
    store: &Store,
    stats: &Stats,
    om: bool,
) {
    counter(
        out,
        "metricast_records_accepted",
        "Records stored.",
        om,
        &plain(stats.records_accepted),
    );
    let refused: Vec<(String, u64)> = stats
        .records_refused
        .iter()
        .map(|(reason, n)| {
            (format!("{{reason=\"{}\"}}", escape_label(reason)), *n)
        })
        .collect();
    counter(
        out,
        "metricast_records_refused",
        "Records refused, by reason.",
        om,
        &refused,
    );
    let requests: Vec<(String, u64)> = stats
        .requests
        .iter()
        .map(|((route, status), n)| {
            (
                format!(
                    "{{route=\"{}\",status=\"{status}\"}}",
                    escape_label(route)
                ),
                *n,
            )
        })
        .collect();
    counter(
        out,
        "metricast_http_requests",
        "HTTP answers, by route and status.",
        om,
        &requests,
    );
    let connections = [
        ("{kind=\"http\"}".to_owned(), stats.open_http as f64),
        ("{kind=\"dashboard\"}".to_owned(), stats.open_dashboards as f64),
    ];
    gauge(out, "metricast_connections", "Open connections.", &connections);
    gauge(
        out,
        "metricast_metrics",
        "Distinct metrics held.",
        &[(String::new(), store.len() as f64)],
    );
    counter(
        out,
        "metricast_dashboard_frames_sent",
        "Frames written to dashboards (snapshots, updates, keepalives, pings).",
        om,
        &plain(stats.frames_sent),
    );
    counter(
        out,
        "metricast_dashboard_frames_dropped",
        "Frames dropped for dashboards that fell too far behind.",
        om,
        &plain(stats.frames_dropped),
    );
    counter(
        out,
        "metricast_dashboard_resyncs",
        "Fresh snapshots sent to dashboards that fell behind.",
        om,
        &plain(stats.resyncs),
    );
    counter(out, "metricast_dashboard_writes", "Socket writes to dashboards; frames_sent / writes is frames per write.", om, &plain(stats.dashboard_writes));
    let bytes = [
        ("{kind=\"http\"}".to_owned(), stats.http_bytes),
        ("{kind=\"dashboard\"}".to_owned(), stats.dashboard_bytes),
    ];
    counter(
        out,
        "metricast_bytes_written",
        "Bytes written to clients.",
        om,
        &bytes,
    );
    gauge(
        out,
        "metricast_process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        &[(String::new(), stats.started)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record;

    fn store_with(names: &[&str]) -> Store {
        let mut store = Store::new(10, 100);
        for name in names {
            let body =
                serde_json::json!({"metric": name, "value": 2.5}).to_string();
            store.apply(&mut record::parse(body.as_bytes()).unwrap()).unwrap();
        }
        store
    }

    #[test]
    fn names_are_sanitised_and_collisions_resolved() {
        let store = store_with(&[
            "a.b",
            "a_b",
            "a-b",
            "9lives",
            "__x",
            "metricast_up",
            "ok",
            "ok_total",
            "ok_count",
        ]);
        let names: Vec<String> = exposed_names(&store);
        // Store order is by original name: "9lives", "__x", "a-b", "a.b",
        // "a_b", "metricast_up", "ok", "ok_count", "ok_total".
        assert_eq!(
            names,
            [
                "_9lives",
                "user___x",
                "a_b_2",
                "a_b_3",
                "a_b",
                "user_metricast_up",
                "ok",
                "ok_2",
                "ok_3"
            ]
        );
    }

    #[test]
    fn metrics_become_summaries_with_count_and_sum() {
        let store = store_with(&["rev\"enue"]);
        let text =
            String::from_utf8(encode(&store, &Stats::default(), Format::Text))
                .unwrap();
        assert!(text.contains("# TYPE rev_enue summary\n"), "{text}");
        assert!(
            text.contains("rev_enue_count 1\nrev_enue_sum 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"# HELP rev_enue recorded metric "rev"enue""#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE metricast_records_accepted_total counter\n")
        );
        assert!(!text.contains("# EOF"));
        let om = String::from_utf8(encode(
            &store,
            &Stats::default(),
            Format::OpenMetrics,
        ))
        .unwrap();
        assert!(om.contains("# TYPE metricast_records_accepted counter\n"));
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains(r#"recorded metric \"rev\"enue\""#), "{om}");
    }

    #[test]
    fn negotiation_prefers_json_unless_asked() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate("", Some(prometheus)), Ok(Format::OpenMetrics));
        let old = "text/plain;version=0.0.4;q=1,*/*;q=0.1";
        assert_eq!(negotiate("", Some(old)), Ok(Format::Text));
        assert_eq!(negotiate("", Some("*/*")), Ok(Format::Json));
        assert_eq!(negotiate("", None), Ok(Format::Json));
        let browser =
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(negotiate("", Some(browser)), Ok(Format::Json));
        assert_eq!(
            negotiate("format=prometheus", Some("*/*")),
            Ok(Format::Text)
        );
        assert_eq!(
            negotiate("format=json", Some(prometheus)),
            Ok(Format::Json)
        );
        assert!(negotiate("format=xml", None).is_err());
    }
}
