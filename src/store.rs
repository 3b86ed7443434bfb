//! The metric store: every metric's count, exact sum and recent metadata.
//!
//! The store is plain owned state, touched only by the reactor thread. It
//! also keeps the encoded `GET /metrics` body and the snapshot frame, built
//! at most once per change however many readers ask for them, so that a
//! scrape storm or ten thousand dashboards connecting at once cost one
//! encoding.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::rc::Rc;

use crate::decimal::{Decimal, Number};
use crate::record::Record;
use crate::wire;

/// One metric's facts.
#[derive(Debug)]
struct Metric {
    count: u64,
    sum: Number,
    /// Compact JSON objects, oldest first. Kept as the `String` the record
    /// was parsed into: shrinking it to a `Box<str>` would cost a
    /// reallocation per record for a few bytes of capacity.
    metadata: VecDeque<String>,
}

impl Metric {
    /// Moves the record's metadata, if any, to the end of the bounded list.
    fn keep(&mut self, record: &mut Record<'_>, limit: usize) -> bool {
        if limit == 0 {
            return false;
        }
        let Some(metadata) = record.metadata.take() else { return false };
        if self.metadata.len() >= limit {
            self.metadata.pop_front();
        }
        self.metadata.push_back(metadata);
        true
    }
}

/// Why the store refused a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Adding the value would make the metric's sum infinite.
    SumOverflow,
    /// The record names a new metric but the store is full.
    TooManyMetrics(usize),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::SumOverflow => f.write_str(
                "field 'value' would make the metric's sum overflow; \
                 the record was not counted",
            ),
            StoreError::TooManyMetrics(limit) => write!(
                f,
                "the server already holds {limit} metrics, its limit; \
                 record into an existing metric or raise --max-metrics"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// All metrics, keyed and listed by name.
#[derive(Debug)]
pub struct Store {
    metrics: BTreeMap<Box<str>, Metric>,
    metadata_limit: usize,
    max_metrics: usize,
    json: Option<Rc<[u8]>>,
    snapshot: Option<Rc<[u8]>>,
}

impl Store {
    /// An empty store that keeps `metadata_limit` metadata objects per
    /// metric and at most `max_metrics` metrics.
    pub fn new(metadata_limit: usize, max_metrics: usize) -> Store {
        Store {
            metrics: BTreeMap::new(),
            metadata_limit,
            max_metrics,
            json: None,
            snapshot: None,
        }
    }

    /// Each metric's name, count and sum, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, Number)> {
        self.metrics.iter().map(|(name, m)| (&**name, m.count, m.sum))
    }

    /// How many metrics are held.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Whether no metric is held.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Applies a validated record, or changes nothing and says why not.
    ///
    /// The record's metadata moves into the store, which saves a copy per
    /// record; the result says whether it was kept, and
    /// [`newest_metadata`](Self::newest_metadata) then lends it out.
    pub fn apply(
        &mut self,
        record: &mut Record<'_>,
    ) -> Result<bool, StoreError> {
        self.json = None;
        self.snapshot = None;
        let limit = self.metadata_limit;
        if let Some(metric) = self.metrics.get_mut(&*record.metric) {
            metric.sum = metric
                .sum
                .checked_add(record.value)
                .ok_or(StoreError::SumOverflow)?;
            metric.count += 1;
            return Ok(metric.keep(record, limit));
        }
        if self.metrics.len() >= self.max_metrics {
            return Err(StoreError::TooManyMetrics(self.max_metrics));
        }
        let sum = Number::Exact(Decimal::ZERO)
            .checked_add(record.value)
            .ok_or(StoreError::SumOverflow)?;
        let fresh = Metric { count: 1, sum, metadata: VecDeque::new() };
        let metric = self.metrics.entry(record.metric.as_ref().into());
        Ok(metric.or_insert(fresh).keep(record, limit))
    }

    /// The newest metadata object kept for `name`.
    pub fn newest_metadata(&self, name: &str) -> Option<&str> {
        self.metrics.get(name)?.metadata.back().map(String::as_str)
    }

    /// The state as the JSON object `GET /metrics` returns.
    pub fn json(&mut self) -> Rc<[u8]> {
        let metrics = &self.metrics;
        Rc::clone(self.json.get_or_insert_with(|| encode(metrics).into()))
    }

    /// The `snapshot` message as a complete WebSocket frame.
    pub fn snapshot_frame(&mut self) -> Rc<[u8]> {
        if let Some(frame) = &self.snapshot {
            return Rc::clone(frame);
        }
        let frame: Rc<[u8]> = wire::snapshot_frame(&self.json()).into();
        self.snapshot = Some(Rc::clone(&frame));
        frame
    }
}

fn encode(metrics: &BTreeMap<Box<str>, Metric>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + metrics.len() * 64);
    out.push(b'{');
    for (i, (name, metric)) in metrics.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        wire::json_string(name, &mut out);
        let _ = write!(
            out,
            ":{{\"count\":{},\"sum\":{},\"metadata\":[",
            metric.count, metric.sum
        );
        for (j, meta) in metric.metadata.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(meta.as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record;

    fn record(store: &mut Store, body: &str) -> Result<(), StoreError> {
        store.apply(&mut record::parse(body.as_bytes()).unwrap()).map(|_| ())
    }

    fn state(store: &mut Store) -> serde_json::Value {
        serde_json::from_slice(&store.json()).unwrap()
    }

    #[test]
    fn counts_sums_and_metadata_accumulate() {
        let mut store = Store::new(100, 10);
        record(&mut store, r#"{"metric":"r","value":0.1,"metadata":{"a":1}}"#)
            .unwrap();
        record(&mut store, r#"{"metric":"r","value":0.2}"#).unwrap();
        let text = String::from_utf8(store.json().to_vec()).unwrap();
        assert_eq!(text, r#"{"r":{"count":2,"sum":0.3,"metadata":[{"a":1}]}}"#);
    }

    #[test]
    fn metadata_keeps_only_the_newest_entries() {
        let mut store = Store::new(3, 10);
        for i in 0..5 {
            let body = format!(r#"{{"metric":"m","metadata":{{"i":{i}}}}}"#);
            record(&mut store, &body).unwrap();
        }
        let meta = &state(&mut store)["m"]["metadata"];
        assert_eq!(meta, &serde_json::json!([{"i": 2}, {"i": 3}, {"i": 4}]));
    }

    #[test]
    fn a_refused_record_changes_nothing() {
        let mut store = Store::new(100, 1);
        record(&mut store, r#"{"metric":"m","value":1.5e308}"#).unwrap();
        let before = state(&mut store);
        let overflow = r#"{"metric":"m","value":1.5e308,"metadata":{"x":1}}"#;
        assert_eq!(record(&mut store, overflow), Err(StoreError::SumOverflow));
        let full = record(&mut store, r#"{"metric":"other"}"#);
        assert_eq!(full, Err(StoreError::TooManyMetrics(1)));
        assert_eq!(state(&mut store), before);
    }

    #[test]
    fn cached_encodings_follow_changes() {
        let mut store = Store::new(100, 10);
        let first = store.snapshot_frame();
        assert!(Rc::ptr_eq(&first, &store.snapshot_frame()));
        record(&mut store, r#"{"metric":"m"}"#).unwrap();
        let second = store.snapshot_frame();
        assert!(!Rc::ptr_eq(&first, &second));
        assert!(
            second.ends_with(br#"{"m":{"count":1,"sum":1.0,"metadata":[]}}}"#)
        );
    }
}
