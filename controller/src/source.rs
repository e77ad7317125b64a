//! Client source addresses: the key that per-address rate limits and budgets count under,
//! and the budget of connections that have not finished authenticating.
//!
//! A connection costs the controller a socket, memory and, during the TLS handshake, CPU
//! before anyone knows who is on the other end. The budget bounds those connections
//! globally and per source address, so idle sockets from a few addresses cannot take the
//! slots that devices and admins need. The per-source share is generous by default: a
//! whole site of Pis often sits behind one NAT address and reconnects at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The key under which an address is limited: an IPv4 address as it is, an IPv6 address by
/// its /64 (one host usually holds a whole /64, so single IPv6 addresses are free to
/// rotate), and an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// How many connections may be unauthenticated at once: in total, and per source key.
#[derive(Debug, Clone)]
pub struct PreAuthBudget {
    global: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, u32>>>,
    per_source_max: u32,
}

/// A global slot, taken before a connection is accepted.
#[derive(Debug)]
pub struct Slot(OwnedSemaphorePermit);

/// An admitted, not yet authenticated connection; dropping it gives its slot and its
/// source's share back (when the connection authenticates or ends).
#[derive(Debug)]
pub struct PreAuth {
    _slot: OwnedSemaphorePermit,
    key: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PreAuthBudget {
    /// A budget of `global` connections in total and `per_source` per source key (both at
    /// least 1).
    pub fn new(global: usize, per_source: u32) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_source: Arc::new(Mutex::new(HashMap::new())),
            per_source_max: per_source.max(1),
        }
    }

    /// Waits for a global slot. Accept loops call this before `accept()`: while every slot
    /// is taken, new connections wait in the kernel's listen backlog instead of being
    /// half-served. `None` only if the budget was closed, which never happens.
    pub async fn slot(&self) -> Option<Slot> {
        self.global.clone().acquire_owned().await.ok().map(Slot)
    }

    /// Admits a connection from `peer` with its global slot, or refuses it (`None`) when
    /// its source has used up its share.
    pub fn admit(&self, slot: Slot, peer: IpAddr) -> Option<PreAuth> {
        let key = source_key(peer);
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.per_source_max {
            return None;
        }
        *n += 1;
        drop(map);
        Some(PreAuth {
            _slot: slot.0,
            key,
            per_source: self.per_source.clone(),
        })
    }

    /// Unauthenticated connections now (for metrics).
    pub fn in_use(&self, total: usize) -> usize {
        total.saturating_sub(self.global.available_permits())
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("203.0.113.9"), "203.0.113.9");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:ffff::1"), "2001:db8:1:2::");
        assert_ne!(k("2001:db8:1:3::1"), k("2001:db8:1:2::1"));
        assert_eq!(k("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(k("::1"), "::");
    }

    #[tokio::test]
    async fn per_source_share_and_release() {
        let budget = PreAuthBudget::new(10, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = budget.admit(budget.slot().await.unwrap(), a).unwrap();
        let _a2 = budget.admit(budget.slot().await.unwrap(), a).unwrap();
        assert!(budget.admit(budget.slot().await.unwrap(), a).is_none());
        // Another source is not affected, and a refused admission gives its slot back.
        let _b1 = budget.admit(budget.slot().await.unwrap(), b).unwrap();
        assert_eq!(budget.in_use(10), 3);
        drop(a1);
        assert!(budget.admit(budget.slot().await.unwrap(), a).is_some());
        // Two addresses of one IPv6 /64 share a share.
        let v6 = PreAuthBudget::new(10, 1);
        let _x = v6
            .admit(v6.slot().await.unwrap(), "2001:db8::1".parse().unwrap())
            .unwrap();
        assert!(
            v6.admit(v6.slot().await.unwrap(), "2001:db8::2".parse().unwrap())
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_global_budget_makes_accepting_wait() {
        let budget = PreAuthBudget::new(1, 5);
        let held = budget
            .admit(budget.slot().await.unwrap(), "192.0.2.1".parse().unwrap())
            .unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), budget.slot());
        assert!(
            waiting.await.is_err(),
            "a second slot while the only one is held"
        );
        drop(held);
        assert!(budget.slot().await.is_some());
    }
}
