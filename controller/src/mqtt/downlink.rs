//! The way to the devices: messages for a device (command, ack, certificate) go to its live
//! session's bounded queue, or are dropped and counted when it has none. Nothing here
//! waits or buffers: what matters is sent again when the device comes back (commands on
//! reconnect, acks when the device re-sends its unacknowledged samples).

use std::sync::{Arc, Weak};

use crate::mqtt::gateway::Gateway;
use crate::mqtt::ingest::Outgoing;

/// A handle that sends messages to devices. It does not keep the gateway alive: the ingest
/// writer holds one, and the gateway holds the writer's queue, so a strong handle would keep
/// the writer waiting for more at shutdown instead of draining and stopping.
#[derive(Debug, Clone)]
pub struct Downlink {
    gateway: Weak<Gateway>,
}

impl Downlink {
    pub fn new(gateway: &Arc<Gateway>) -> Self {
        Self {
            gateway: Arc::downgrade(gateway),
        }
    }

    /// Sends `msg` to its device if it is connected; never waits. After shutdown, nothing.
    pub fn send(&self, msg: Outgoing) {
        if let Some(g) = self.gateway.upgrade() {
            g.deliver(msg);
        }
    }
}
