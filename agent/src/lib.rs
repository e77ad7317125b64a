//! The pifleet agent: enrollment, telemetry collection, the on-disk spool and the MQTT link.

pub mod backoff;
pub mod collect;
pub mod config;
pub mod enroll;
pub mod files;
pub mod run;
pub mod spool;
pub mod tls;
