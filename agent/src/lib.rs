//! The pifleet agent: enrollment, telemetry collection, the on-disk spool, the MQTT link,
//! signed remote commands, and application deployments.

pub mod apps;
pub mod backoff;
pub mod bootstrap;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod enroll;
pub mod https;
pub mod metrics;
pub mod notify;
pub mod release_keys;
pub mod renew;
pub mod run;
pub mod sections;
pub mod services;
pub mod spool;
pub mod tls;
pub mod watchdog;
