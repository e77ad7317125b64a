//! The pifleet controller: PKI and enrollment, the mutual-TLS MQTT gateway that is every
//! device's broker, lossless SQLite ingest, and the HTTPS listener.

pub mod api;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod commands;
pub mod config;
pub mod database;
pub mod datadir;
pub mod demo;
pub mod enroll;
pub mod housekeeping;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod mqtt;
#[cfg(feature = "otel")]
pub mod otel;
pub mod pki;
pub mod releases;
pub mod rollouts;
pub mod rotation;
pub mod serve;
pub mod setup;
pub mod signal;
pub mod source;
pub mod store;
pub mod supervise;
