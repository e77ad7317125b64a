//! The device side: the mutual-TLS gateway in front of the embedded broker, the broker
//! itself, and ingest from the broker into the store (and acknowledgements back).

pub mod broker;
pub mod gateway;
pub mod ingest;
