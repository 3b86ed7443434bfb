//! Counters describing the server's own work, exposed to Prometheus under
//! the `metricast_` prefix.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::record::RecordError;
use crate::store::StoreError;

/// Why a record was refused, as a Prometheus label value.
pub const REFUSAL_REASONS: [&str; 6] = [
    "malformed",
    "bad_metric",
    "bad_value",
    "bad_metadata",
    "sum_overflow",
    "metric_limit",
];

/// The label value for a validation failure.
pub fn invalid_reason(error: &RecordError) -> &'static str {
    use RecordError::*;
    match error {
        NotJson(_) | NotObject => "malformed",
        MissingMetric | MetricNotString | MetricEmpty | MetricTooLong(_)
        | MetricControl => "bad_metric",
        ValueNotNumber | ValueNotFinite => "bad_value",
        MetadataNotObject | MetadataTooLarge(_) | MetadataTooDeep => {
            "bad_metadata"
        }
    }
}

/// The label value for a store refusal.
pub fn rejected_reason(error: &StoreError) -> &'static str {
    match error {
        StoreError::SumOverflow => "sum_overflow",
        StoreError::TooManyMetrics(_) => "metric_limit",
    }
}

/// The server's counters.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Seconds since the Unix epoch when the server started.
    pub started: f64,
    /// Records stored.
    pub records_accepted: u64,
    /// Records refused, by reason.
    pub records_refused: BTreeMap<&'static str, u64>,
    /// Answers, by route and status code.
    pub requests: BTreeMap<(&'static str, u16), u64>,
    /// Open HTTP connections.
    pub open_http: u64,
    /// Open dashboards.
    pub open_dashboards: u64,
    /// Frames (updates, keepalives, pings) written to dashboards.
    pub frames_sent: u64,
    /// Frames dropped for dashboards that fell too far behind.
    pub frames_dropped: u64,
    /// Times a dashboard was resynced with a fresh snapshot.
    pub resyncs: u64,
    /// Socket writes to dashboards.
    pub dashboard_writes: u64,
    /// Bytes written to dashboards.
    pub dashboard_bytes: u64,
    /// Bytes written to HTTP clients.
    pub http_bytes: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Stats {
            started,
            records_accepted: 0,
            records_refused: REFUSAL_REASONS.iter().map(|r| (*r, 0)).collect(),
            requests: BTreeMap::new(),
            open_http: 0,
            open_dashboards: 0,
            frames_sent: 0,
            frames_dropped: 0,
            resyncs: 0,
            dashboard_writes: 0,
            dashboard_bytes: 0,
            http_bytes: 0,
        }
    }
}

impl Stats {
    /// Counts a refused record.
    pub fn refused(&mut self, reason: &'static str) {
        *self.records_refused.entry(reason).or_default() += 1;
    }

    /// Counts an answer.
    pub fn answered(&mut self, route: &'static str, status: u16) {
        *self.requests.entry((route, status)).or_default() += 1;
    }
}
