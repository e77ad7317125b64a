//! The way to the devices: messages for a device (command, ack, certificate) go to its live
//! session's bounded queue, or are dropped and counted when it has none. Nothing here
//! waits or buffers: what matters is sent again when the device comes back (commands on
//! reconnect, acks when the device re-sends its unacknowledged samples).

use std::sync::{Arc, Weak};

use crate::mqtt::external::Broker;
use crate::mqtt::gateway::Gateway;
use crate::mqtt::ingest::Outgoing;

/// A handle that sends messages to devices, through the built-in gateway or the external
/// broker. It does not keep either alive: the ingest writer holds one, and they hold the
/// writer's queue (through the router), so a strong handle would keep the writer waiting for
/// more at shutdown instead of draining and stopping.
#[derive(Debug, Clone)]
pub enum Downlink {
    Gateway(Weak<Gateway>),
    Broker(Weak<Broker>),
}

impl Downlink {
    pub fn new(gateway: &Arc<Gateway>) -> Self {
        Self::Gateway(Arc::downgrade(gateway))
    }

    pub fn broker(broker: &Arc<Broker>) -> Self {
        Self::Broker(Arc::downgrade(broker))
    }

    /// Sends `msg` to its device if it is connected; never waits. After shutdown, nothing.
    pub fn send(&self, msg: Outgoing) {
        match self {
            Self::Gateway(g) => {
                if let Some(g) = g.upgrade() {
                    g.deliver(msg);
                }
            }
            Self::Broker(b) => {
                if let Some(b) = b.upgrade() {
                    b.deliver(msg);
                }
            }
        }
    }
}
