//! Refused enrollments, counted. Anyone can send enrollment requests, and an audit entry
//! per refusal would give them an fsync on the single database writer for each one. So a
//! refusal only bumps a counter per (source, reason) in memory, and a periodic flush
//! appends one audit entry per source (all in one transaction) with the counts and the
//! time span. The map is bounded: sources past the bound share one bucket.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::audit::Event;
use crate::source::source_key;
use crate::store::Store;

/// Most sources counted one by one between two flushes.
pub const MAX_SOURCES: usize = 10_000;

/// The audit `source` of the bucket that holds the sources past [`MAX_SOURCES`].
pub const OTHER_SOURCES: &str = "other sources";

/// Refusal counts since the last flush.
#[derive(Debug)]
pub struct RefusalTally {
    counts: Mutex<Counts>,
    max_sources: usize,
}

#[derive(Debug, Default)]
struct Counts {
    sources: HashMap<IpAddr, Count>,
    others: Option<Count>,
}

#[derive(Debug)]
struct Count {
    total: u64,
    /// Reasons are a small fixed set of static strings.
    reasons: BTreeMap<&'static str, u64>,
    first_ms: i64,
    last_ms: i64,
}

impl Count {
    fn new(at_ms: i64) -> Self {
        Self {
            total: 0,
            reasons: BTreeMap::new(),
            first_ms: at_ms,
            last_ms: at_ms,
        }
    }

    fn add(&mut self, reason: &'static str, at_ms: i64) {
        self.total = self.total.saturating_add(1);
        let n = self.reasons.entry(reason).or_insert(0);
        *n = n.saturating_add(1);
        self.first_ms = self.first_ms.min(at_ms);
        self.last_ms = self.last_ms.max(at_ms);
    }

    /// `37 refused attempts (unknown enrollment token ×30, CSR refused ×7) between … and …`
    fn detail(&self) -> String {
        let mut reasons: Vec<(&str, u64)> = self.reasons.iter().map(|(r, n)| (*r, *n)).collect();
        // Most frequent first; ties by name, so the text is deterministic.
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut s = format!(
            "{} refused attempt{} (",
            self.total,
            if self.total == 1 { "" } else { "s" }
        );
        for (i, (reason, n)) in reasons.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{reason} ×{n}");
        }
        let _ = write!(
            s,
            ") between {} and {}",
            rfc3339(self.first_ms),
            rfc3339(self.last_ms)
        );
        s
    }
}

fn rfc3339(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// How a source key appears in the audit log: an IPv6 key is a /64.
fn source_text(key: IpAddr) -> String {
    match key {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

impl Default for RefusalTally {
    fn default() -> Self {
        Self::new(MAX_SOURCES)
    }
}

impl RefusalTally {
    /// A tally that counts up to `max_sources` sources one by one (at least 1).
    pub fn new(max_sources: usize) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max_sources: max_sources.max(1),
        }
    }

    /// Counts one refusal of a request from `ip` (counted under its [`source_key`]).
    pub fn record(&self, ip: IpAddr, reason: &'static str, at_ms: i64) {
        let key = source_key(ip);
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        let count = if c.sources.len() >= self.max_sources && !c.sources.contains_key(&key) {
            c.others.get_or_insert_with(|| Count::new(at_ms))
        } else {
            c.sources.entry(key).or_insert_with(|| Count::new(at_ms))
        };
        count.add(reason, at_ms);
    }

    /// Takes everything counted so far as audit events, one per source (the sources past
    /// the bound as one more), oldest first, and starts counting afresh.
    pub fn drain(&self) -> Vec<Event> {
        let taken = {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *c)
        };
        let mut counted: Vec<(String, Count)> = taken
            .sources
            .into_iter()
            .map(|(k, c)| (source_text(k), c))
            .collect();
        counted.sort_by(|a, b| a.1.first_ms.cmp(&b.1.first_ms).then(a.0.cmp(&b.0)));
        if let Some(others) = taken.others {
            counted.push((OTHER_SOURCES.to_owned(), others));
        }
        counted
            .into_iter()
            .map(|(source, count)| Event {
                actor: "anonymous".to_owned(),
                source,
                action: "device.enroll".to_owned(),
                target: String::new(),
                outcome: "refused".to_owned(),
                detail: count.detail(),
            })
            .collect()
    }

    /// Appends what was counted to the audit log (one transaction). A failure is logged
    /// with the entries, so the counts are not lost from sight.
    pub async fn flush(&self, store: &Store) {
        let events = self.drain();
        if events.is_empty() {
            return;
        }
        if let Err(e) = store.append_audits(&events).await {
            for ev in &events {
                tracing::error!(error = %e, source = %ev.source, detail = %ev.detail,
                    "cannot audit refused enrollments");
            }
        }
    }

    /// Flushes every `every` and once more at shutdown.
    pub async fn run(&self, store: Store, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: nothing to flush yet
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush(&store).await,
            }
        }
        self.flush(&store).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_event_per_source_with_counts_by_reason() {
        let t = RefusalTally::new(10);
        for i in 0..30 {
            t.record(ip("203.0.113.9"), "unknown enrollment token", 1_000 + i);
        }
        for i in 0..7 {
            t.record(ip("203.0.113.9"), "CSR refused", 2_000 + i);
        }
        t.record(ip("198.51.100.1"), "enrollment token expired", 500);
        let events = t.drain();
        assert_eq!(events.len(), 2, "{events:#?}");
        // Oldest first.
        assert_eq!(events[0].source, "198.51.100.1");
        assert_eq!(
            events[0].detail,
            "1 refused attempt (enrollment token expired ×1) between \
             1970-01-01T00:00:00.500Z and 1970-01-01T00:00:00.500Z"
        );
        assert_eq!(events[1].source, "203.0.113.9");
        assert_eq!(
            events[1].detail,
            "37 refused attempts (unknown enrollment token ×30, CSR refused ×7) between \
             1970-01-01T00:00:01.000Z and 1970-01-01T00:00:02.006Z"
        );
        for e in &events {
            assert_eq!(
                (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()),
                ("anonymous", "device.enroll", "refused")
            );
        }
        // Drained: the next flush has nothing.
        assert!(t.drain().is_empty());
    }

    #[test]
    fn ipv6_sources_count_by_64() {
        let t = RefusalTally::new(10);
        t.record(ip("2001:db8:1:2::1"), "unknown enrollment token", 1);
        t.record(ip("2001:db8:1:2::ffff"), "unknown enrollment token", 2);
        t.record(ip("::ffff:192.0.2.1"), "unknown enrollment token", 3);
        let events = t.drain();
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(sources, ["2001:db8:1:2::/64", "192.0.2.1"]);
        assert!(events[0].detail.starts_with("2 refused attempts"));
    }

    #[test]
    fn sources_past_the_bound_share_one_bucket() {
        let t = RefusalTally::new(2);
        t.record(ip("192.0.2.1"), "unknown enrollment token", 1);
        t.record(ip("192.0.2.2"), "unknown enrollment token", 2);
        t.record(ip("192.0.2.3"), "unknown enrollment token", 3);
        t.record(ip("192.0.2.4"), "CSR refused", 4);
        // A source already counted keeps its own count.
        t.record(ip("192.0.2.1"), "CSR refused", 5);
        let events = t.drain();
        let got: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.source.as_str(),
                    e.detail.split(" between").next().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "192.0.2.1",
                    "2 refused attempts (CSR refused ×1, unknown enrollment token ×1)"
                ),
                (
                    "192.0.2.2",
                    "1 refused attempt (unknown enrollment token ×1)"
                ),
                (
                    OTHER_SOURCES,
                    "2 refused attempts (CSR refused ×1, unknown enrollment token ×1)"
                ),
            ]
        );
        // After a flush the bound starts afresh.
        t.record(ip("192.0.2.4"), "CSR refused", 6);
        assert_eq!(t.drain()[0].source, "192.0.2.4");
    }
}
