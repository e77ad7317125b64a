//! The simulator's report: the workers' raw measurements merged into percentiles, printed
//! for people or as one JSON document (`--json`) for tests and scripts.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hist::{Hist, quantile};
use super::proto::{Reply, StormDevice};

/// Percentiles of per-device times, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Spread {
    fn of_us(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        let q = |p| quantile(&v, p).map(|us| us as f64 / 1000.0);
        Self {
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            max_ms: q(1.0),
        }
    }
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k.clone()).or_insert(0) += n;
    }
}

/// All devices connecting at once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connect {
    pub devices: usize,
    pub connected: usize,
    /// Until the last device's CONNACK (`None`: not all connected).
    pub all_connected_s: Option<f64>,
    /// Per device, from the start (retries included).
    pub per_device: Spread,
    /// Failed attempts (each followed by a backoff and a retry) and lost sessions, by reason.
    pub failures: BTreeMap<String, u64>,
    /// CPU seconds the broker and the simulator (all its processes) spent in this phase.
    pub broker_cpu_s: f64,
    pub sim_cpu_s: f64,
}

impl Connect {
    pub fn merge(replies: &[Reply]) -> Self {
        let mut c = Connect::default();
        let mut times = Vec::new();
        for r in replies {
            if let Reply::Connected {
                connect_us,
                failures,
            } = r
            {
                c.devices += connect_us.len();
                times.extend(connect_us.iter().flatten().copied());
                add(&mut c.failures, failures);
            }
        }
        c.connected = times.len();
        if c.connected == c.devices {
            c.all_connected_s = times.iter().max().map(|us| *us as f64 / 1e6);
        }
        c.per_device = Spread::of_us(times);
        c
    }
}

/// Telemetry at the configured rate once everything is connected, with the broker's and
/// the simulator's resources sampled from `/proc`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Steady {
    pub duration_s: f64,
    pub offered_samples_per_s: f64,
    pub published: u64,
    pub acked: u64,
    /// Acknowledged samples per second (after the SQLite commit; PUBACKs for Mosquitto).
    pub committed_per_s: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub ack_max_ms: Option<f64>,
    /// The simulator's own CPU (all its processes), percent of one core.
    pub sim_cpu_pct: f64,
    /// The simulator's RSS (all its processes) at the end of the load.
    pub sim_rss_kib: u64,
    pub broker_cpu_pct: f64,
    pub broker_rss_before_kib: u64,
    pub broker_rss_kib: u64,
    pub broker_rss_peak_kib: u64,
    pub broker_fds: usize,
    /// (RSS with devices connected − RSS before any device) / devices.
    pub rss_per_device_kib: f64,
    pub failures: BTreeMap<String, u64>,
    /// With `--resend-s`: samples still unacknowledged after telemetry stopped and the
    /// devices had a phase's time to get everything acknowledged (0: none lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unacked: Option<u64>,
}

impl Steady {
    /// Merges the workers' `Stats` replies into the counters and latency percentiles.
    pub fn merge_stats(&mut self, replies: &[Reply]) {
        let mut lat = Hist::default();
        for r in replies {
            if let Reply::Stats {
                published,
                acked,
                latency,
                failures,
            } = r
            {
                self.published += published;
                self.acked += acked;
                lat.merge(latency);
                add(&mut self.failures, failures);
            }
        }
        let ms = |p| lat.quantile_us(p).map(|us| us as f64 / 1000.0);
        self.ack_p50_ms = ms(0.5);
        self.ack_p99_ms = ms(0.99);
        self.ack_max_ms = ms(1.0);
        if self.duration_s > 0.0 {
            self.committed_per_s = self.acked as f64 / self.duration_s;
        }
    }
}

/// One storm: every device reconnecting, measured from the first TCP connect the broker
/// accepted after it began (the restarted listener's first accept, for `kill`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    pub kind: String,
    pub devices: usize,
    pub reconnected: usize,
    pub acknowledged: usize,
    /// From t0 until the last CONNACK / the last first-sample acknowledgement.
    pub all_connected_s: Option<f64>,
    pub all_acknowledged_s: Option<f64>,
    pub connack: Spread,
    pub first_ack: Spread,
    pub failures: BTreeMap<String, u64>,
    /// CPU seconds the simulator spent in this storm (the broker's restarted process is new).
    pub sim_cpu_s: f64,
}

impl Storm {
    pub fn merge(kind: &str, replies: &[Reply]) -> Self {
        let mut s = Storm {
            kind: kind.to_owned(),
            ..Default::default()
        };
        let mut devs: Vec<StormDevice> = Vec::new();
        for r in replies {
            if let Reply::Storm { devices, failures } = r {
                devs.extend(devices);
                add(&mut s.failures, failures);
            }
        }
        s.devices = devs.len();
        let Some(t0) = devs.iter().map(|d| d.tcp).filter(|t| *t != 0).min() else {
            return s;
        };
        let since = |t: u64| (t != 0).then(|| t.saturating_sub(t0));
        let connack: Vec<u64> = devs.iter().filter_map(|d| since(d.connack)).collect();
        let ack: Vec<u64> = devs.iter().filter_map(|d| since(d.ack)).collect();
        s.reconnected = connack.len();
        s.acknowledged = ack.len();
        if s.reconnected == s.devices {
            s.all_connected_s = connack.iter().max().map(|us| *us as f64 / 1e6);
        }
        if s.acknowledged == s.devices {
            s.all_acknowledged_s = ack.iter().max().map(|us| *us as f64 / 1e6);
        }
        s.connack = Spread::of_us(connack);
        s.first_ack = Spread::of_us(ack);
        s
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub broker: String,
    pub devices: usize,
    pub processes: usize,
    pub sources: u32,
    pub rate: f64,
    pub batch: usize,
    pub enrolled_new: usize,
    pub enroll_s: f64,
    pub connect: Connect,
    pub steady: Option<Steady>,
    pub storms: Vec<Storm>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "not all".into(), |v| format!("{v:.2} s"))
}

fn spread(s: &Spread) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        ms(s.p50_ms),
        ms(s.p90_ms),
        ms(s.p99_ms),
        ms(s.max_ms)
    )
}

fn failures(f: &BTreeMap<String, u64>) -> String {
    if f.is_empty() {
        return "none".into();
    }
    f.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut o = format!(
            "broker={} devices={} processes={} sources={} rate/device={}/s batch={}\n",
            self.broker, self.devices, self.processes, self.sources, self.rate, self.batch
        );
        o += &format!(
            "enrollment   {} new identities in {:.1} s\n",
            self.enrolled_new, self.enroll_s
        );
        let c = &self.connect;
        o += &format!(
            "connect      {}/{} connected, all in {}; per device {}\n",
            c.connected,
            c.devices,
            secs(c.all_connected_s),
            spread(&c.per_device)
        );
        o += &format!(
            "             CPU: broker {:.1} s, simulator {:.1} s; failed attempts: {}\n",
            c.broker_cpu_s,
            c.sim_cpu_s,
            failures(&c.failures)
        );
        if let Some(s) = &self.steady {
            o += &format!(
                "steady       {:.0} s: offered {:.0} samples/s, acknowledged {:.0} samples/s ({} of {} published)\n",
                s.duration_s, s.offered_samples_per_s, s.committed_per_s, s.acked, s.published
            );
            o += &format!(
                "             publish->ack p50 {}  p99 {}  max {}\n",
                ms(s.ack_p50_ms),
                ms(s.ack_p99_ms),
                ms(s.ack_max_ms)
            );
            o += &format!(
                "             broker CPU {:.0} %, RSS {:.1} MiB (before devices {:.1} MiB, peak {:.1} MiB), {:.1} KiB per device, {} fds\n",
                s.broker_cpu_pct,
                s.broker_rss_kib as f64 / 1024.0,
                s.broker_rss_before_kib as f64 / 1024.0,
                s.broker_rss_peak_kib as f64 / 1024.0,
                s.rss_per_device_kib,
                s.broker_fds
            );
            o += &format!(
                "             simulator CPU {:.0} %, RSS {:.1} MiB; failures {}\n",
                s.sim_cpu_pct,
                s.sim_rss_kib as f64 / 1024.0,
                failures(&s.failures)
            );
        }
        for (i, s) in self.storms.iter().enumerate() {
            o += &format!(
                "storm {} ({}): {}/{} reconnected, all in {}; {}/{} first sample acknowledged, all in {}\n",
                i + 1,
                s.kind,
                s.reconnected,
                s.devices,
                secs(s.all_connected_s),
                s.acknowledged,
                s.devices,
                secs(s.all_acknowledged_s)
            );
            o += &format!("             CONNACK   {}\n", spread(&s.connack));
            o += &format!("             first ack {}\n", spread(&s.first_ack));
            o += &format!(
                "             simulator CPU {:.1} s; failures: {}\n",
                s.sim_cpu_s,
                failures(&s.failures)
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_times_count_from_the_first_accept() {
        let d = |tcp, connack, ack| StormDevice { tcp, connack, ack };
        let replies = vec![
            Reply::Storm {
                devices: vec![d(1_000_000, 1_100_000, 1_200_000)],
                failures: BTreeMap::from([("tcp refused".to_owned(), 3)]),
            },
            Reply::Storm {
                devices: vec![d(1_500_000, 2_000_000, 0)],
                failures: BTreeMap::from([("tcp refused".to_owned(), 2)]),
            },
        ];
        let s = Storm::merge("kill", &replies);
        assert_eq!((s.devices, s.reconnected, s.acknowledged), (2, 2, 1));
        assert_eq!(s.all_connected_s, Some(1.0));
        assert_eq!(s.all_acknowledged_s, None);
        assert_eq!(s.connack.max_ms, Some(1000.0));
        assert_eq!(s.first_ack.max_ms, Some(200.0));
        assert_eq!(s.failures.get("tcp refused"), Some(&5));
    }
}
