//! The application state the reactor hands to every handler: the metric
//! store, the dashboard feed and the server's counters.

use crate::hub::Feed;
use crate::record::{self, RecordError};
use crate::security::Security;
use crate::stats::{self, Stats};
use crate::store::{Store, StoreError};
use crate::wire;

/// Why a record was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The body broke a validation rule.
    Invalid(RecordError),
    /// The store could not take it.
    Rejected(StoreError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(e) => e.fmt(f),
            Refusal::Rejected(e) => e.fmt(f),
        }
    }
}

/// Everything the request handlers share.
#[derive(Debug)]
pub struct App {
    /// The metrics.
    pub store: Store,
    /// Frames on their way to dashboards.
    pub feed: Feed,
    /// Counters.
    pub stats: Stats,
    /// Access rules and the headers every answer carries.
    pub security: Security,
}

impl App {
    /// A fresh application state.
    pub fn new(store: Store, security: Security) -> App {
        App { store, feed: Feed::new(), stats: Stats::default(), security }
    }

    /// Validates and stores a record, then publishes its update.
    pub fn record(&mut self, body: &[u8]) -> Result<(), Refusal> {
        let mut record = record::parse(body).map_err(|e| {
            self.stats.refused(stats::invalid_reason(&e));
            Refusal::Invalid(e)
        })?;
        let kept = self.store.apply(&mut record).map_err(|e| {
            self.stats.refused(stats::rejected_reason(&e));
            Refusal::Rejected(e)
        })?;
        self.stats.records_accepted += 1;
        let store = &self.store;
        self.feed.publish_text(|out| {
            // Metadata the store kept has moved there; with a metadata
            // limit of 0 it is still in the record.
            let metadata = if kept {
                store.newest_metadata(&record.metric)
            } else {
                record.metadata.as_deref()
            };
            wire::metric_update(&record.metric, record.value, metadata, out)
        });
        Ok(())
    }

    /// Publishes the periodic keepalive message and ping.
    pub fn keepalive(&mut self) {
        self.feed.publish_frame(wire::KEEPALIVE_FRAME);
        self.feed.publish_frame(wire::PING_FRAME);
    }
}
