//! The way to the devices: messages for a device (command, ack, certificate) go to its live
//! session's bounded queue, or are dropped and counted when it has none. Nothing here
//! waits or buffers: what matters is sent again when the device comes back (commands on
//! reconnect, acks when the device re-sends its unacknowledged samples).

use std::sync::Arc;

use crate::mqtt::gateway::Gateway;
use crate::mqtt::ingest::Outgoing;

/// A handle that sends messages to devices.
#[derive(Debug, Clone)]
pub struct Downlink {
    gateway: Arc<Gateway>,
}

impl Downlink {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// Sends `msg` to its device if it is connected; never waits.
    pub fn send(&self, msg: Outgoing) {
        self.gateway.deliver(msg);
    }
}
