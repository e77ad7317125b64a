//! The `[watchdog]` section of `agent.toml`: how often the service watchdog looks at the
//! allowlisted units, how it judges them, and what rolls a guarded deploy back.
//!
//! ```toml
//! [watchdog]
//! enabled = true                 # false: no polling, no starts, no guard window
//! poll_s = 10                    # between two looks at every unit
//! window_s = 300                 # restarts and ups and downs are counted over this window
//! crash_loop_restarts = 3        # restarts by systemd within window_s: a crash loop
//! flap_transitions = 6           # ups and downs without restarts within window_s: flapping
//! backoff_s = [60, 300, 900, 3600]  # waits before each start after start-limit-hit
//! max_starts_per_day = 6         # the watchdog's own starts in any 24 hours
//! recovered_after_s = 300        # up this long after a start: recovered
//! guard_restarts = 3             # restarts of an app's unit within guard_span_s while its
//! guard_span_s = 300             #   deploy is under guard (`[apps.NAME] guard_window_s`,
//!                                #   default 1800) roll the release back
//! ```
//!
//! The section is read by a deserializer written out here rather than derived: every field
//! is a number but two, so one code path reads them all, which keeps the agent binary a
//! dozen KB smaller than the derived one. Unknown keys are refused all the same.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::decide::Policy;

/// `[watchdog]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogSection {
    pub enabled: bool,
    pub poll_s: u64,
    pub window_s: u64,
    pub crash_loop_restarts: u64,
    pub flap_transitions: u64,
    pub backoff_s: Vec<u64>,
    pub max_starts_per_day: u64,
    pub recovered_after_s: u64,
    pub guard_restarts: u64,
    pub guard_span_s: u64,
}

impl Default for WatchdogSection {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_s: 10,
            window_s: 300,
            crash_loop_restarts: 3,
            flap_transitions: 6,
            backoff_s: vec![60, 300, 900, 3600],
            max_starts_per_day: 6,
            recovered_after_s: 300,
            guard_restarts: 3,
            guard_span_s: 300,
        }
    }
}

/// Seconds as milliseconds (the bounds checked keep it far from overflowing).
pub fn ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A count as the policy keeps it (the bounds checked keep it small).
pub fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Seconds in a day: the longest any timer may be.
const DAY: u64 = 86_400;

const FIELDS: &[&str] = &[
    "enabled",
    "poll_s",
    "window_s",
    "crash_loop_restarts",
    "flap_transitions",
    "backoff_s",
    "max_starts_per_day",
    "recovered_after_s",
    "guard_restarts",
    "guard_span_s",
];

impl WatchdogSection {
    /// The decision policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            crash_loop_restarts: count(self.crash_loop_restarts),
            flap_transitions: count(self.flap_transitions),
            window_ms: ms(self.window_s),
            backoff_ms: self.backoff_s.iter().map(|s| ms(*s)).collect(),
            max_starts_per_day: count(self.max_starts_per_day),
            recovered_after_ms: ms(self.recovered_after_s),
        }
    }

    /// Every problem, as `watchdog.<key> …` lines.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, v, max) in [
            ("poll_s", self.poll_s, DAY),
            ("window_s", self.window_s, DAY),
            ("recovered_after_s", self.recovered_after_s, DAY),
            ("guard_span_s", self.guard_span_s, DAY),
            ("crash_loop_restarts", self.crash_loop_restarts, 1000),
            ("flap_transitions", self.flap_transitions, 1000),
            ("max_starts_per_day", self.max_starts_per_day, 1000),
            ("guard_restarts", self.guard_restarts, 1000),
        ] {
            if !(1..=max).contains(&v) {
                p.push(format!("watchdog.{key} must be 1..={max}"));
            }
        }
        if self.backoff_s.is_empty()
            || self.backoff_s.len() > 16
            || self.backoff_s.iter().any(|s| !(1..=DAY).contains(s))
        {
            p.push("watchdog.backoff_s must be 1 to 16 waits of 1..=86400 seconds".to_owned());
        }
        p
    }

    /// The numeric setting called `key`.
    fn number(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "poll_s" => &mut self.poll_s,
            "window_s" => &mut self.window_s,
            "crash_loop_restarts" => &mut self.crash_loop_restarts,
            "flap_transitions" => &mut self.flap_transitions,
            "max_starts_per_day" => &mut self.max_starts_per_day,
            "recovered_after_s" => &mut self.recovered_after_s,
            "guard_restarts" => &mut self.guard_restarts,
            "guard_span_s" => &mut self.guard_span_s,
            _ => return None,
        })
    }
}

/// What the one visitor reads: the section (a table) or `backoff_s` (an array).
enum Read {
    Section(WatchdogSection),
    List(Vec<u64>),
}

/// Reads both the table and its array, so the TOML reader is instantiated once for them.
struct ReadVisitor;

impl<'de> Visitor<'de> for ReadVisitor {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [watchdog] table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let mut s = WatchdogSection::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == "enabled" {
                s.enabled = map.next_value()?;
            } else if key == "backoff_s" {
                match map.next_value_seed(ReadVisitor)? {
                    Read::List(l) => s.backoff_s = l,
                    Read::Section(_) => {
                        return Err(de::Error::custom("backoff_s must be an array of seconds"));
                    }
                }
            } else if let Some(slot) = s.number(&key) {
                *slot = map.next_value()?;
            } else {
                return Err(de::Error::unknown_field(&key, FIELDS));
            }
        }
        Ok(Read::Section(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
        let mut l = Vec::new();
        while let Some(v) = seq.next_element::<u64>()? {
            l.push(v);
        }
        Ok(Read::List(l))
    }
}

impl<'de> de::DeserializeSeed<'de> for ReadVisitor {
    type Value = Read;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for WatchdogSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ReadVisitor)? {
            Read::Section(s) => Ok(s),
            Read::List(_) => Err(de::Error::custom("[watchdog] must be a table")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        #[serde(default)]
        watchdog: WatchdogSection,
    }

    fn parse(text: &str) -> Result<WatchdogSection, String> {
        toml::from_str::<File>(text)
            .map(|f| f.watchdog)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_policy_defaults_and_valid() {
        let s = WatchdogSection::default();
        assert_eq!(s.policy(), Policy::default());
        assert!(s.problems().is_empty());
        assert_eq!(parse("").unwrap(), s);
        assert_eq!(parse("[watchdog]\n").unwrap(), s);
    }

    #[test]
    fn reads_every_key_and_refuses_unknown_ones() {
        let text = "[watchdog]\nenabled = false\npoll_s = 1\nwindow_s = 2\n\
                    crash_loop_restarts = 4\nflap_transitions = 5\nbackoff_s = [1, 2]\n\
                    max_starts_per_day = 7\nrecovered_after_s = 8\nguard_restarts = 9\n\
                    guard_span_s = 10\n";
        let s = parse(text).unwrap();
        assert_eq!(
            s,
            WatchdogSection {
                enabled: false,
                poll_s: 1,
                window_s: 2,
                crash_loop_restarts: 4,
                flap_transitions: 5,
                backoff_s: vec![1, 2],
                max_starts_per_day: 7,
                recovered_after_s: 8,
                guard_restarts: 9,
                guard_span_s: 10,
            }
        );
        assert_eq!(s.policy().backoff_ms, [1000, 2000]);
        for (bad, needle) in [
            ("shell = true", "shell"),
            ("poll_s = \"fast\"", "poll_s"),
            ("poll_s = -1", "poll_s"),
            ("backoff_s = 60", "backoff_s"),
            ("backoff_s = [\"a\"]", "backoff_s"),
            ("enabled = 1", "enabled"),
        ] {
            let e = parse(&format!("[watchdog]\n{bad}\n")).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert!(parse("watchdog = 3\n").is_err());
        assert!(parse("watchdog = [1]\n").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let s = WatchdogSection {
            poll_s: 0,
            window_s: 100_000,
            crash_loop_restarts: 0,
            backoff_s: vec![],
            guard_restarts: 5000,
            ..WatchdogSection::default()
        };
        let p = s.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        let one_second = WatchdogSection {
            poll_s: 1,
            window_s: 1,
            backoff_s: vec![1],
            recovered_after_s: 1,
            guard_span_s: 1,
            ..WatchdogSection::default()
        };
        assert!(one_second.problems().is_empty());
    }
}
