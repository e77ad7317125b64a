//! The device side: the mutual-TLS gateway that is each device's MQTT broker, the routing
//! of what devices publish, ingest into the store, and the way back to the devices.
//!
//! Devices only talk to the controller, never to each other, so there is no general broker
//! inside: each device's session lives in its connection's task and hands messages to the
//! controller in-process. One socket and one task per device.

pub mod downlink;
pub mod external;
pub mod gateway;
pub mod ingest;
pub mod route;

/// Largest MQTT packet accepted from anyone: the biggest payload kind plus headers.
pub fn max_packet_size() -> usize {
    pifleet_shared::topic::max_payload_any() + 1024
}
