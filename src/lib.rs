//! metricast: a real-time metrics server on one small, single-threaded
//! reactor.
//!
//! Producers `POST /record`, scrapers `GET /metrics`, and dashboards watch
//! `/dashboard` over WebSocket. The binary's `main` parses settings and runs
//! the [`reactor`]; the modules below are public so that benchmarks and the
//! replay tool can reuse them.

#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod decimal;
pub mod http;
pub mod hub;
pub mod logging;
pub mod output;
pub mod prometheus;
pub mod reactor;
pub mod record;
pub mod replay;
pub mod router;
pub mod security;
pub mod stats;
pub mod store;
pub mod timer;
pub mod wire;
