//! What one simulator process shares between its device tasks: the settings, a slot of
//! measurements per device, the phase switches and the counters.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::hist::Hist;

/// What the simulated devices count as the acknowledgement of a telemetry message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// pifleet's application ack on `fleet/<id>/down/ack`, sent after the SQLite commit.
    App,
    /// The broker's PUBACK (Mosquitto sends no application ack).
    PubAck,
}

/// How every device of this process behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: SocketAddr,
    /// Samples per second per device (0: no periodic telemetry).
    pub rate: f64,
    /// Samples per message.
    pub batch: usize,
    pub keep_alive: Duration,
    /// TCP connect + TLS handshake + CONNACK, like the agent's MQTT client.
    pub connect_timeout: Duration,
    pub backoff_max: Duration,
    pub ack: AckMode,
    /// Devices are spread round-robin over this many source addresses from 127.0.0.2.
    pub sources: u32,
    /// Keep unacknowledged telemetry and send it again after a reconnect and after this long
    /// without acknowledgement progress, like the agent's spool (`None`: forget it).
    pub resend: Option<Duration>,
}

impl Settings {
    /// The loopback source address of the device with global index `i`.
    pub fn source(&self, i: usize) -> Ipv4Addr {
        let n = u64::from(self.sources.max(1));
        let off = u32::try_from(i as u64 % n).unwrap_or(0);
        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)).saturating_add(off))
    }
}

/// Wall-clock microseconds since the Unix epoch (comparable across processes).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One device's measurements; 0 means "not yet".
#[derive(Debug, Default)]
pub struct Slot {
    /// First CONNACK, microseconds after the connect phase started (at least 1).
    pub connected_us: AtomicU64,
    /// Since the storm was armed, wall clock: first successful TCP connect, CONNACK, and the
    /// acknowledgement of the first sample sent on the new connection.
    pub storm_tcp: AtomicU64,
    pub storm_connack: AtomicU64,
    pub storm_ack: AtomicU64,
}

/// State shared by the device tasks of one process.
#[derive(Debug)]
pub struct Shared {
    pub settings: Settings,
    pub start: Instant,
    pub slots: Vec<Slot>,
    /// Telemetry runs while true.
    pub load: watch::Receiver<bool>,
    /// Every bump makes every device close its connection (a `drop` storm).
    pub drop: watch::Receiver<u64>,
    pub storm_armed: AtomicBool,
    /// Failed connect attempts and lost sessions, by reason.
    pub failures: Mutex<BTreeMap<String, u64>>,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    /// Samples published and not acknowledged yet (kept for resending or still in flight).
    pub unacked: AtomicU64,
    pub latency: Mutex<Hist>,
}

impl Shared {
    pub fn fail(&self, reason: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(reason.to_owned()).or_insert(0) += 1;
        }
    }

    pub fn take_failures(&self) -> BTreeMap<String, u64> {
        self.failures
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    pub fn record_latency(&self, lat: &[u64], samples: u64) {
        self.acked.fetch_add(samples, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            for us in lat {
                h.record_us(*us);
            }
        }
    }

    /// Starts measuring a storm: clears every device's storm slots.
    pub fn arm_storm(&self) {
        for s in &self.slots {
            s.storm_tcp.store(0, Ordering::Relaxed);
            s.storm_connack.store(0, Ordering::Relaxed);
            s.storm_ack.store(0, Ordering::Relaxed);
        }
        self.storm_armed.store(true, Ordering::SeqCst);
    }

    /// Records `field` (a storm slot) once, when a storm is armed.
    pub fn storm_mark(&self, field: &AtomicU64) {
        if self.storm_armed.load(Ordering::Relaxed) {
            let _ = field.compare_exchange(0, wall_us(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin_from_127_0_0_2() {
        let s = Settings {
            broker: SocketAddr::from(([127, 0, 0, 1], 1)),
            rate: 0.0,
            batch: 1,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_max: Duration::from_secs(60),
            ack: AckMode::App,
            sources: 3,
            resend: None,
        };
        let got: Vec<Ipv4Addr> = (0..4).map(|i| s.source(i)).collect();
        assert_eq!(
            got,
            [
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4),
                Ipv4Addr::new(127, 0, 0, 2)
            ]
        );
        let wide = Settings { sources: 300, ..s };
        assert_eq!(wide.source(299), Ipv4Addr::new(127, 0, 1, 45));
    }
}
