//! Who is connected, and the revocation decisions, under one lock.
//!
//! Every connection is known here from the end of its TLS handshake on, not only once its
//! CONNECT registered it: a client that finished the handshake before a revocation and
//! withholds CONNECT must not slip through afterwards. The revoked set, the check at the
//! end of the handshake, the check again at registration and the closing of revoked
//! connections all happen under the same lock, so a revocation and a registration cannot
//! interleave. Revocation only ever adds serials: nothing un-revokes a certificate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use pifleet_shared::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mqtt::ingest::Outgoing;

/// Why a connection was closed from outside its task; the first reason set wins.
pub(super) type CloseReason = Arc<OnceLock<&'static str>>;

/// A connection past its handshake.
#[derive(Debug)]
struct Conn {
    device: DeviceId,
    serial: String,
    cancel: CancellationToken,
    reason: CloseReason,
    /// The session's queue of messages for the device, once registered.
    down: Option<mpsc::Sender<Outgoing>>,
}

impl Conn {
    fn close(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}

#[derive(Debug, Default)]
struct Inner {
    revoked: HashSet<String>,
    conns: HashMap<u64, Conn>,
    /// The registered (CONNECTed) connection of each device.
    live: HashMap<DeviceId, u64>,
}

/// What became of a message for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    Queued,
    /// No live session.
    Offline,
    /// Its session's queue was full; the session is being closed.
    Full,
}

/// The certificate serial is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Revoked;

/// Why a connection could not become its device's live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotRegistered {
    /// Revoked, or closed meanwhile.
    Revoked,
    /// A connection of the same device accepted later is live.
    Superseded,
}

/// Connections and revoked serials (lowercase hex, as [`crate::pki::tls::normalize_serial`]).
#[derive(Debug, Default)]
pub(super) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub(super) fn new(revoked: HashSet<String>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                revoked,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a connection whose handshake just verified `serial` for `device`, or refuses
    /// it when the serial is revoked.
    pub(super) fn handshaken(
        &self,
        conn: u64,
        device: &DeviceId,
        serial: &str,
        cancel: &CancellationToken,
        reason: &CloseReason,
    ) -> Result<(), Revoked> {
        let mut inner = self.lock();
        if inner.revoked.contains(serial) {
            return Err(Revoked);
        }
        inner.conns.insert(
            conn,
            Conn {
                device: device.clone(),
                serial: serial.to_owned(),
                cancel: cancel.clone(),
                reason: reason.clone(),
                down: None,
            },
        );
        Ok(())
    }

    /// Makes `conn` its device's live connection at CONNECT, closing an older one of the
    /// same device. Refused when its serial was revoked after the handshake (or the
    /// connection was closed meanwhile), and when a connection of the device accepted
    /// after this one is live already: under load, a CONNECT its client gave up on (and
    /// retried on a new connection) can reach this point late, and must not take the
    /// device's session from the retry that succeeded.
    pub(super) fn register(
        &self,
        conn: u64,
        down: mpsc::Sender<Outgoing>,
    ) -> Result<(), NotRegistered> {
        let mut inner = self.lock();
        let (device, revoked) = match inner.conns.get(&conn) {
            None => return Err(NotRegistered::Revoked),
            Some(c) => (
                c.device.clone(),
                inner.revoked.contains(&c.serial) || c.cancel.is_cancelled(),
            ),
        };
        if revoked {
            return Err(NotRegistered::Revoked);
        }
        if inner.live.get(&device).is_some_and(|&newer| newer > conn) {
            return Err(NotRegistered::Superseded);
        }
        if let Some(c) = inner.conns.get_mut(&conn) {
            c.down = Some(down);
        }
        if let Some(old) = inner.live.insert(device, conn)
            && old != conn
            && let Some(o) = inner.conns.get(&old)
        {
            o.close("replaced");
        }
        Ok(())
    }

    /// Forgets an ended connection; true when it was its device's live connection.
    pub(super) fn remove(&self, conn: u64) -> bool {
        let mut inner = self.lock();
        let Some(c) = inner.conns.remove(&conn) else {
            return false;
        };
        if inner.live.get(&c.device) == Some(&conn) {
            inner.live.remove(&c.device);
            true
        } else {
            false
        }
    }

    /// Adds revoked serials and closes every connection — registered or still before
    /// CONNECT — that presented one of them. Returns how many serials were new, and the
    /// (device, serial) of each connection closed.
    pub(super) fn revoke(
        &self,
        serials: impl IntoIterator<Item = String>,
    ) -> (usize, Vec<(DeviceId, String)>) {
        let mut inner = self.lock();
        let before = inner.revoked.len();
        inner.revoked.extend(serials);
        let added = inner.revoked.len() - before;
        let Inner { revoked, conns, .. } = &*inner;
        let closed = conns
            .values()
            .filter(|c| revoked.contains(&c.serial) && !c.cancel.is_cancelled())
            .map(|c| {
                c.close("revoked");
                (c.device.clone(), c.serial.clone())
            })
            .collect();
        (added, closed)
    }

    /// Queues `msg` for its device's live session. A session whose queue is full is not
    /// reading its socket: it is closed (its device reconnects and is sent what matters
    /// again) rather than buffered for without bound.
    pub(super) fn deliver(&self, msg: Outgoing) -> Delivery {
        let inner = self.lock();
        let Some(c) = inner
            .live
            .get(&msg.topic.device)
            .and_then(|c| inner.conns.get(c))
        else {
            return Delivery::Offline;
        };
        let Some(down) = &c.down else {
            return Delivery::Offline;
        };
        match down.try_send(msg) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.close("slow_consumer");
                Delivery::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Offline,
        }
    }

    /// Whether `device` has a registered connection now.
    #[cfg(test)]
    fn is_connected(&self, device: &DeviceId) -> bool {
        self.lock().live.contains_key(device)
    }

    /// Closes every connection (shutdown).
    pub(super) fn close_all(&self, reason: &'static str) {
        for c in self.lock().conns.values() {
            c.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> mpsc::Sender<Outgoing> {
        mpsc::channel(1).0
    }

    fn conn(r: &Registry, id: u64, device: &str, serial: &str) -> (CancellationToken, CloseReason) {
        let cancel = CancellationToken::new();
        let reason = CloseReason::default();
        r.handshaken(
            id,
            &DeviceId::parse(device).unwrap(),
            serial,
            &cancel,
            &reason,
        )
        .unwrap();
        (cancel, reason)
    }

    #[test]
    fn revocation_reaches_connections_before_connect() {
        let r = Registry::new(HashSet::new());
        let (pending, why) = conn(&r, 1, "pi-a", "aa");
        let (live, _) = conn(&r, 2, "pi-b", "bb");
        r.register(2, down()).unwrap();
        let (added, closed) = r.revoke(["aa".to_owned(), "bb".to_owned()]);
        assert_eq!((added, closed.len()), (2, 2));
        assert_eq!(r.revoke(["bb".to_owned()]), (0, vec![]));
        assert!(pending.is_cancelled() && live.is_cancelled());
        assert_eq!(why.get(), Some(&"revoked"));
        // A CONNECT arriving afterwards on the handshaken socket is refused.
        assert_eq!(r.register(1, down()), Err(NotRegistered::Revoked));
        // A new handshake with a revoked serial is refused.
        let cancel = CancellationToken::new();
        let dev = DeviceId::parse("pi-a").unwrap();
        assert_eq!(
            r.handshaken(3, &dev, "aa", &cancel, &CloseReason::default()),
            Err(Revoked)
        );
    }

    #[test]
    fn a_newer_connection_replaces_the_older_one() {
        let r = Registry::new(HashSet::new());
        let dev = DeviceId::parse("pi-a").unwrap();
        let (old, why) = conn(&r, 1, "pi-a", "aa");
        r.register(1, down()).unwrap();
        let (new, _) = conn(&r, 2, "pi-a", "aa");
        r.register(2, down()).unwrap();
        assert!(old.is_cancelled() && !new.is_cancelled());
        assert_eq!(why.get(), Some(&"replaced"));
        // The old one ending does not take the device offline; the new one does.
        assert!(!r.remove(1));
        assert!(r.is_connected(&dev));
        assert!(r.remove(2));
        assert!(!r.is_connected(&dev));
    }

    #[test]
    fn messages_reach_the_live_session_and_a_full_queue_closes_it() {
        use pifleet_shared::Topic;
        use pifleet_shared::topic::Kind;
        let r = Registry::new(HashSet::new());
        let dev = DeviceId::parse("pi-a").unwrap();
        let msg = || Outgoing {
            topic: Topic::new(DeviceId::parse("pi-a").unwrap(), Kind::Ack),
            payload: vec![1],
        };
        assert_eq!(r.deliver(msg()), Delivery::Offline);
        let (cancel, why) = conn(&r, 1, "pi-a", "aa");
        assert_eq!(r.deliver(msg()), Delivery::Offline, "not before CONNECT");
        let (tx, mut rx) = mpsc::channel(1);
        r.register(1, tx).unwrap();
        assert_eq!(r.deliver(msg()), Delivery::Queued);
        assert_eq!(rx.try_recv().unwrap().topic.device, dev);
        assert_eq!(r.deliver(msg()), Delivery::Queued);
        assert!(!cancel.is_cancelled());
        assert_eq!(r.deliver(msg()), Delivery::Full);
        assert!(cancel.is_cancelled());
        assert_eq!(why.get(), Some(&"slow_consumer"));
    }

    /// A CONNECT that reaches registration after a later connection of the same device
    /// (its client gave up and retried) is refused and leaves the live session alone.
    #[test]
    fn a_late_connect_does_not_take_over_a_newer_session() {
        let r = Registry::new(HashSet::new());
        let dev = DeviceId::parse("pi-a").unwrap();
        let (old, _) = conn(&r, 1, "pi-a", "aa");
        let (new, _) = conn(&r, 2, "pi-a", "aa");
        r.register(2, down()).unwrap();
        assert_eq!(r.register(1, down()), Err(NotRegistered::Superseded));
        assert!(!new.is_cancelled() && !old.is_cancelled());
        assert!(!r.remove(1), "the late one was never live");
        assert!(r.is_connected(&dev));
    }

    #[test]
    fn a_closed_connection_cannot_register() {
        let r = Registry::new(HashSet::new());
        let (c, _) = conn(&r, 1, "pi-a", "aa");
        r.close_all("shutdown");
        assert!(c.is_cancelled());
        assert_eq!(r.register(1, down()), Err(NotRegistered::Revoked));
        assert_eq!(r.register(99, down()), Err(NotRegistered::Revoked));
    }
}
