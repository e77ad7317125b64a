//! Latency histograms the simulator's processes merge: logarithmic buckets 1 % wide, from
//! one microsecond to hours, kept sparse so an idle histogram costs nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bucket `i` holds values in `[GROWTH^i, GROWTH^(i+1))` microseconds.
const GROWTH: f64 = 1.01;

/// A mergeable histogram of durations in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub struct Hist {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    max_us: u64,
}

/// On the wire: (bucket, count) pairs (JSON map keys would be strings).
#[derive(Serialize, Deserialize)]
struct Wire {
    buckets: Vec<(u32, u64)>,
    max_us: u64,
}

impl From<Hist> for Wire {
    fn from(h: Hist) -> Self {
        Wire {
            buckets: h.buckets.into_iter().collect(),
            max_us: h.max_us,
        }
    }
}

impl From<Wire> for Hist {
    fn from(w: Wire) -> Self {
        let count = w.buckets.iter().map(|(_, n)| n).sum();
        Hist {
            buckets: w.buckets.into_iter().collect(),
            count,
            max_us: w.max_us,
        }
    }
}

fn bucket(us: u64) -> u32 {
    if us <= 1 {
        return 0;
    }
    // Finite and non-negative for us ≥ 1; the cast saturates.
    ((us as f64).ln() / GROWTH.ln()) as u32
}

fn lower_bound(b: u32) -> u64 {
    GROWTH.powi(i32::try_from(b).unwrap_or(i32::MAX)).round() as u64
}

impl Hist {
    pub fn record_us(&mut self, us: u64) {
        *self.buckets.entry(bucket(us)).or_insert(0) += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Hist) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_insert(0) += n;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `p` quantile (0..=1) in microseconds, within 1 %; `None` when empty.
    pub fn quantile_us(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if p >= 1.0 {
            return Some(self.max_us);
        }
        let rank = ((self.count as f64 - 1.0) * p.max(0.0)).round() as u64;
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return Some(lower_bound(*b).min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

/// The `p` quantile of sorted values; `None` when empty.
pub fn quantile(sorted: &[u64], p: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    let i = ((last as f64) * p.clamp(0.0, 1.0)).round() as usize;
    sorted.get(i.min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent_and_merge() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for us in 1..=10_000u64 {
            if us % 2 == 0 {
                a.record_us(us)
            } else {
                b.record_us(us)
            }
        }
        a.merge(&b);
        assert_eq!(a.count(), 10_000);
        let p50 = a.quantile_us(0.5).unwrap_or(0) as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.02, "{p50}");
        let p99 = a.quantile_us(0.99).unwrap_or(0) as f64;
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.02, "{p99}");
        assert_eq!(a.quantile_us(1.0), Some(10_000));
        assert_eq!(Hist::default().quantile_us(0.5), None);
        assert_eq!(quantile(&[1, 2, 3], 0.5), Some(2));
        let wire = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Hist>(&wire).ok(), Some(a));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
