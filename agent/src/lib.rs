//! The pifleet agent: enrollment, telemetry collection, the on-disk spool and the MQTT link.

pub mod collect;
pub mod spool;
