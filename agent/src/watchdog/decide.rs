//! The service watchdog's decisions, as a pure function of what `systemctl show` reports
//! over time: for each allowlisted unit (services and apps) it notices crash loops (the
//! unit's restart count climbing fast) and flapping (the unit going up and down without
//! systemd restarting it), and when systemd gives up on a unit (`start-limit-hit`) it
//! starts it again on its own backoff — 1, 5, 15, then every 60 minutes, at most 6 times in
//! any 24 hours — until the unit stays up. The caller polls the units, feeds each
//! observation here, reports the events and runs the restarts it is told to.

use std::collections::VecDeque;

/// How the watchdog judges a unit. Every timer is configurable down to a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// This many restarts by systemd within `window_ms` is a crash loop.
    pub crash_loop_restarts: u32,
    /// This many ups and downs within `window_ms`, without systemd restarting, is flapping.
    pub flap_transitions: u32,
    pub window_ms: i64,
    /// Waits before each of the watchdog's own starts after systemd gave up; the last one
    /// repeats.
    pub backoff_ms: Vec<i64>,
    /// At most this many of its own starts in any 24 hours.
    pub max_starts_per_day: u32,
    /// A unit active this long after a start counts as recovered (the backoff resets).
    pub recovered_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        const MIN: i64 = 60_000;
        Self {
            crash_loop_restarts: 3,
            flap_transitions: 6,
            window_ms: 5 * MIN,
            backoff_ms: vec![MIN, 5 * MIN, 15 * MIN, 60 * MIN],
            max_starts_per_day: 6,
            recovered_after_ms: 5 * MIN,
        }
    }
}

/// A unit's state as `systemctl show -p ActiveState,Result,NRestarts` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at_ms: i64,
    /// `active` (or `reloading`) counts as up; `failed`, `inactive` as down; `activating`
    /// and `deactivating` as neither.
    pub active_state: String,
    /// `success`, `exit-code`, `start-limit-hit`, …
    pub result: String,
    pub n_restarts: u32,
}

impl Observation {
    fn up(&self) -> Option<bool> {
        match self.active_state.as_str() {
            "active" | "reloading" => Some(true),
            "failed" | "inactive" => Some(false),
            _ => None,
        }
    }
}

/// What the watchdog noticed, to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// systemd restarted the unit `restarts` times within the window.
    CrashLoop { restarts: u32 },
    /// The unit went up and down `transitions` times within the window.
    Flapping { transitions: u32 },
    /// systemd stopped restarting the unit; the watchdog starts it at `retry_at_ms`.
    GaveUp { retry_at_ms: i64 },
    /// The watchdog starts the unit (its `attempt`th start since systemd gave up).
    Starting { attempt: u32 },
    /// The daily budget of starts is spent; the next is possible at `retry_at_ms`.
    BudgetSpent { retry_at_ms: i64 },
    /// The unit stayed up after the watchdog's starts.
    Recovered,
}

/// One unit's watch.
#[derive(Debug, Clone, Default)]
pub struct UnitWatch {
    last: Option<Observation>,
    restarts: VecDeque<i64>,
    transitions: VecDeque<i64>,
    crash_looping: bool,
    flapping: bool,
    /// Set while systemd has given up and the watchdog owns the unit.
    next_start_at: Option<i64>,
    attempts: u32,
    starts: VecDeque<i64>,
    up_since: Option<i64>,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub events: Vec<Event>,
    /// Start the unit now (`systemctl start`).
    pub start: bool,
}

impl UnitWatch {
    /// Feeds one observation (in time order) and says what to report and whether to start
    /// the unit.
    pub fn observe(&mut self, p: &Policy, obs: Observation) -> Verdict {
        let now = obs.at_ms;
        let mut v = Verdict::default();
        let horizon = now - p.window_ms;
        if let Some(last) = &self.last {
            let climbed = obs.n_restarts.saturating_sub(last.n_restarts);
            for _ in 0..climbed.min(1_000) {
                self.restarts.push_back(now);
            }
            if let (Some(a), Some(b)) = (last.up(), obs.up())
                && a != b
                && climbed == 0
            {
                self.transitions.push_back(now);
            }
        }
        while self.restarts.front().is_some_and(|t| *t <= horizon) {
            self.restarts.pop_front();
        }
        while self.transitions.front().is_some_and(|t| *t <= horizon) {
            self.transitions.pop_front();
        }
        let restarts = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        let transitions = u32::try_from(self.transitions.len()).unwrap_or(u32::MAX);
        // Reported once per episode: when it starts.
        let looping = restarts >= p.crash_loop_restarts;
        if looping && !self.crash_looping {
            v.events.push(Event::CrashLoop { restarts });
        }
        self.crash_looping = looping;
        let flapping = transitions >= p.flap_transitions;
        if flapping && !self.flapping {
            v.events.push(Event::Flapping { transitions });
        }
        self.flapping = flapping;

        match obs.up() {
            Some(true) => {
                let since = *self.up_since.get_or_insert(now);
                if self.attempts > 0 && now - since >= p.recovered_after_ms {
                    v.events.push(Event::Recovered);
                    self.attempts = 0;
                    self.next_start_at = None;
                }
            }
            Some(false) => {
                self.up_since = None;
                if obs.result == "start-limit-hit" && self.next_start_at.is_none() {
                    let at = self.schedule(p, now);
                    v.events.push(Event::GaveUp { retry_at_ms: at });
                }
            }
            None => self.up_since = None,
        }
        if let Some(at) = self.next_start_at
            && now >= at
            && obs.up() == Some(false)
        {
            while self.starts.front().is_some_and(|t| *t <= now - 86_400_000) {
                self.starts.pop_front();
            }
            if self.starts.len() >= usize::try_from(p.max_starts_per_day).unwrap_or(usize::MAX) {
                let retry = self.starts.front().map_or(now, |t| t + 86_400_000);
                self.next_start_at = Some(retry);
                v.events.push(Event::BudgetSpent { retry_at_ms: retry });
            } else {
                self.attempts += 1;
                self.starts.push_back(now);
                v.events.push(Event::Starting {
                    attempt: self.attempts,
                });
                v.start = true;
                self.next_start_at = Some(self.schedule_after(p, now));
            }
        }
        self.last = Some(obs);
        v
    }

    /// When the watchdog next wants to look at the unit, if it owns it.
    pub fn next_start_at(&self) -> Option<i64> {
        self.next_start_at
    }

    fn schedule(&mut self, p: &Policy, now: i64) -> i64 {
        let at = self.schedule_after(p, now);
        self.next_start_at = Some(at);
        at
    }

    /// The wait before the next start: the backoff step for the attempts so far.
    fn schedule_after(&self, p: &Policy, now: i64) -> i64 {
        let i = usize::try_from(self.attempts).unwrap_or(usize::MAX);
        let wait = p
            .backoff_ms
            .get(i)
            .or(p.backoff_ms.last())
            .copied()
            .unwrap_or(60_000);
        now.saturating_add(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;

    fn obs(at_s: i64, state: &str, result: &str, n: u32) -> Observation {
        Observation {
            at_ms: at_s * S,
            active_state: state.into(),
            result: result.into(),
            n_restarts: n,
        }
    }

    fn policy() -> Policy {
        Policy {
            crash_loop_restarts: 3,
            flap_transitions: 4,
            window_ms: 60 * S,
            backoff_ms: vec![10 * S, 20 * S, 40 * S],
            max_starts_per_day: 3,
            recovered_after_ms: 30 * S,
        }
    }

    #[test]
    fn a_steady_unit_reports_nothing() {
        let p = policy();
        let mut w = UnitWatch::default();
        for t in 0..100 {
            assert_eq!(
                w.observe(&p, obs(t, "active", "success", 0)),
                Verdict::default()
            );
        }
    }

    #[test]
    fn restarts_climbing_fast_are_a_crash_loop_reported_once() {
        let p = policy();
        let mut w = UnitWatch::default();
        w.observe(&p, obs(0, "active", "success", 0));
        assert!(
            w.observe(&p, obs(10, "active", "success", 1))
                .events
                .is_empty()
        );
        assert!(
            w.observe(&p, obs(20, "active", "success", 2))
                .events
                .is_empty()
        );
        assert_eq!(
            w.observe(&p, obs(30, "active", "success", 3)).events,
            [Event::CrashLoop { restarts: 3 }]
        );
        // Still looping: not reported again.
        assert!(
            w.observe(&p, obs(40, "active", "success", 4))
                .events
                .is_empty()
        );
        // Slow restarts (one a window) are no loop.
        let mut slow = UnitWatch::default();
        for i in 0..10u32 {
            let t = i64::from(i) * 70;
            assert!(
                slow.observe(&p, obs(t, "active", "success", i))
                    .events
                    .is_empty()
            );
        }
    }

    #[test]
    fn ups_and_downs_without_restarts_are_flapping() {
        let p = policy();
        let mut w = UnitWatch::default();
        let states = ["active", "inactive", "active", "inactive", "active"];
        let mut events = Vec::new();
        for (i, s) in states.iter().enumerate() {
            events.extend(w.observe(&p, obs(i as i64 * 5, s, "success", 0)).events);
        }
        assert_eq!(events, [Event::Flapping { transitions: 4 }]);
    }

    #[test]
    fn after_systemd_gives_up_the_watchdog_starts_with_backoff_then_recovers() {
        let p = policy();
        let mut w = UnitWatch::default();
        w.observe(&p, obs(0, "active", "success", 0));
        let v = w.observe(&p, obs(5, "failed", "start-limit-hit", 5));
        assert!(
            v.events.contains(&Event::GaveUp {
                retry_at_ms: 15 * S
            }),
            "{v:?}"
        );
        assert!(!v.start);
        // Not before the backoff.
        assert!(!w.observe(&p, obs(10, "failed", "start-limit-hit", 5)).start);
        let v = w.observe(&p, obs(15, "failed", "start-limit-hit", 5));
        assert!(v.start);
        assert!(v.events.contains(&Event::Starting { attempt: 1 }));
        // It failed again: the next start waits the second step (20 s).
        assert_eq!(w.next_start_at(), Some(35 * S));
        assert!(!w.observe(&p, obs(30, "failed", "start-limit-hit", 5)).start);
        let v = w.observe(&p, obs(35, "failed", "start-limit-hit", 5));
        assert!(v.events.contains(&Event::Starting { attempt: 2 }));
        // Now it stays up: recovered after 30 s, and the watchdog lets go.
        w.observe(&p, obs(36, "active", "success", 5));
        assert!(
            w.observe(&p, obs(50, "active", "success", 5))
                .events
                .is_empty()
        );
        assert_eq!(
            w.observe(&p, obs(66, "active", "success", 5)).events,
            [Event::Recovered]
        );
        assert_eq!(w.next_start_at(), None);
    }

    #[test]
    fn the_daily_budget_of_starts_is_kept() {
        let p = Policy {
            backoff_ms: vec![10 * S],
            ..policy()
        };
        let mut w = UnitWatch::default();
        w.observe(&p, obs(0, "failed", "start-limit-hit", 0));
        let mut starts = 0;
        let mut spent = None;
        for t in (10..200).step_by(10) {
            let v = w.observe(&p, obs(t, "failed", "start-limit-hit", 0));
            starts += usize::from(v.start);
            for e in v.events {
                if let Event::BudgetSpent { retry_at_ms } = e {
                    spent.get_or_insert(retry_at_ms);
                }
            }
        }
        assert_eq!(starts, 3, "at most max_starts_per_day");
        // The next start is possible a day after the first.
        assert_eq!(spent, Some(10 * S + 86_400_000));
    }
}
