//! The service watchdog: every `[watchdog] poll_s` it reads each allowlisted unit (the
//! `[commands]` services and every `[apps.NAME]` unit) with `systemctl show` (argv, never a
//! shell), feeds what it sees to [`UnitWatch`] ([`decide`]), reports each event as
//! `Event::Watchdog` on `up/event`, and runs `systemctl start --no-block` when systemd gave
//! up on a unit and the backoff says so. A `systemctl` that fails is logged and the unit is
//! read again on the next poll; nothing here stops the agent.
//!
//! It also keeps the guard window of each app's last install ([`crate::apps::journal::Guard`]):
//! while the window is open, `guard_restarts` restarts of the app's unit within
//! `guard_span_s` roll the release back through the deployer ([`crate::deploy::Deploys`]).
//! The window's start is journaled, so an agent that restarts resumes it until
//! `committed_at + guard_window_s` (by the device clock, at most a whole window from the
//! restart if the clock went back); restarts counted before the agent restarted are
//! forgotten, the count starts again from the unit's restart count at the first poll.

pub mod config;
pub mod decide;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use pifleet_shared::codec;
use pifleet_shared::proto::v1::{self, UnitEventKind};
use pifleet_shared::topic::Kind;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apps::Systemd;
use crate::commands::Sink;
use crate::config::AgentConfig;
use crate::deploy::Deploys;
pub use config::WatchdogSection;
pub use decide::{Event, Observation, Policy, UnitWatch, Verdict};

/// Units watched at most (like the service reports).
const MAX_UNITS: usize = 64;
/// How long `systemctl start --no-block` may take to queue the job.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the watchdog needs besides systemd and the deployer.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll: Duration,
    pub policy: Policy,
    /// The units, each with its app's guard settings if an app runs it.
    pub units: Vec<(String, Option<AppGuard>)>,
}

/// An app's guard window settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppGuard {
    pub app: String,
    /// 0: no guard window.
    pub window_ms: i64,
    pub restarts: u32,
    pub span_ms: i64,
}

impl Settings {
    /// From `agent.toml`; `None` when the watchdog is off or has nothing to watch.
    pub fn from_config(cfg: &AgentConfig) -> Option<Self> {
        let w = &cfg.watchdog;
        if !w.enabled {
            return None;
        }
        let mut units: Vec<(String, Option<AppGuard>)> = cfg
            .apps
            .iter()
            .map(|(app, a)| {
                let guard = AppGuard {
                    app: app.clone(),
                    window_ms: config::ms(a.guard_window_s),
                    restarts: config::count(w.guard_restarts),
                    span_ms: config::ms(w.guard_span_s),
                };
                (a.unit.clone(), Some(guard))
            })
            .collect();
        for s in &cfg.commands.services {
            if !units.iter().any(|(u, _)| u == s) {
                units.push((s.clone(), None));
            }
        }
        units.truncate(MAX_UNITS);
        (!units.is_empty()).then(|| Self {
            poll: Duration::from_secs(w.poll_s.max(1)),
            policy: w.policy(),
            units,
        })
    }
}

/// A unit under watch.
struct Watched {
    unit: String,
    watch: UnitWatch,
    guard: Option<AppGuard>,
    /// The release under guard, when its window closes, and the restarts counted in it.
    open: Option<(String, Instant, UnitWatch)>,
    /// Whether the last read failed (logged once until it works again).
    failing: bool,
}

/// Watches the units until `shutdown`. `deploys` (when the agent deploys apps) keeps the
/// guard windows and carries out guard rollbacks.
pub async fn run<S: Systemd>(
    settings: Settings,
    systemd: S,
    deploys: Option<Arc<Deploys>>,
    events: Arc<dyn Sink>,
    shutdown: CancellationToken,
) {
    let mut units: Vec<Watched> = settings
        .units
        .into_iter()
        .map(|(unit, guard)| Watched {
            unit,
            watch: UnitWatch::default(),
            guard,
            open: None,
            failing: false,
        })
        .collect();
    let mut changes = deploys.as_ref().map(|d| d.changes());
    let started = Instant::now();
    let mut tick = tokio::time::interval(settings.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(d) = &deploys {
        open_guards(&mut units, d);
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = changed(&mut changes) => {
                if let Some(d) = &deploys {
                    open_guards(&mut units, d);
                }
                continue;
            }
        }
        for w in &mut units {
            let now = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            watch_one(
                w,
                now,
                &settings.policy,
                &systemd,
                deploys.as_deref(),
                &*events,
            )
            .await;
        }
    }
}

/// Waits for a change of the apps (forever without a deployer).
async fn changed(rx: &mut Option<watch::Receiver<()>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Opens (or keeps, or closes) each app unit's guard window from the app's journal.
fn open_guards(units: &mut [Watched], deploys: &Deploys) {
    let now = crate::commands::clock_ms();
    for w in units.iter_mut() {
        let Some(g) = &w.guard else { continue };
        let journaled = deploys.guard(&g.app).filter(|_| g.window_ms > 0);
        w.open = match (journaled, w.open.take()) {
            (Some(j), Some(open)) if open.0 == j.dir => Some(open),
            (Some(j), _) => {
                // Clamped: a clock that went back never stretches it past a whole window.
                let left = (g.window_ms - (now - j.committed_at_ms)).clamp(0, g.window_ms);
                let until = Instant::now() + Duration::from_millis(left.unsigned_abs());
                (left > 0).then(|| (j.dir, until, UnitWatch::default()))
            }
            (None, _) => None,
        };
    }
}

/// One poll of one unit: read it, judge it, report, start it if told to, guard it.
async fn watch_one<S: Systemd>(
    w: &mut Watched,
    now: i64,
    policy: &Policy,
    systemd: &S,
    deploys: Option<&Deploys>,
    events: &dyn Sink,
) {
    let status = match systemd.show(&w.unit).await {
        Ok(s) => s,
        Err(e) => {
            if !w.failing {
                tracing::warn!(unit = %w.unit, error = %e, "watchdog cannot read the unit; retrying");
            }
            w.failing = true;
            return;
        }
    };
    w.failing = false;
    let obs = Observation {
        at_ms: now,
        active_state: status.active_state,
        result: status.result,
        n_restarts: u32::try_from(status.n_restarts).unwrap_or(u32::MAX),
    };
    let guard_hit = guard_step(w, &obs);
    let verdict = w.watch.observe(policy, obs);
    for e in verdict.events {
        let kind = kind_of(&e, now);
        tracing::warn!(unit = %w.unit, event = kind.as_str(), "watchdog event");
        send(
            events,
            &v1::Event::Watchdog(v1::UnitEvent {
                unit: w.unit.clone(),
                kind,
            }),
        );
    }
    let app = w.guard.as_ref().map(|g| g.app.as_str());
    let busy = app.is_some_and(|a| deploys.is_some_and(|d| d.busy(a)));
    if verdict.start
        && !busy
        && let Err(e) = systemd.start(&w.unit, START_TIMEOUT).await
    {
        tracing::warn!(unit = %w.unit, error = %e, "watchdog cannot start the unit; retrying after its backoff");
    }
    if let (Some((dir, restarts)), Some(app), Some(d)) = (guard_hit, app, deploys) {
        let span_s = w.guard.as_ref().map_or(0, |g| g.span_ms / 1000);
        let reason =
            format!("crash loop in the guard window: {restarts} restarts within {span_s} s");
        if !d.guard_roll_back(app, &dir, reason).await {
            // Counted again from here; the next poll may try again.
            if let Some(open) = &mut w.open {
                open.2 = UnitWatch::default();
            }
        }
    }
}

/// Feeds the guard window, if open; `Some((release dir, restarts))` when the release
/// crash-looped within it. Closes the window once it is over.
fn guard_step(w: &mut Watched, obs: &Observation) -> Option<(String, u32)> {
    let g = w.guard.as_ref()?;
    let (dir, until, watch) = w.open.as_mut()?;
    if Instant::now() >= *until {
        tracing::info!(unit = %w.unit, release = %dir, "guard window closed");
        w.open = None;
        return None;
    }
    let policy = Policy {
        crash_loop_restarts: g.restarts,
        flap_transitions: u32::MAX,
        window_ms: g.span_ms,
        backoff_ms: Vec::new(),
        max_starts_per_day: 0,
        recovered_after_ms: i64::MAX,
    };
    watch
        .observe(&policy, obs.clone())
        .events
        .into_iter()
        .find_map(|e| match e {
            Event::CrashLoop { restarts } => Some((dir.clone(), restarts)),
            _ => None,
        })
}

/// The wire form of an event seen at `now`.
fn kind_of(e: &Event, now: i64) -> UnitEventKind {
    let secs = |at: i64| u64::try_from(at.saturating_sub(now).max(0) / 1000).unwrap_or(0);
    match *e {
        Event::CrashLoop { restarts } => UnitEventKind::CrashLoop { restarts },
        Event::Flapping { transitions } => UnitEventKind::Flapping { transitions },
        Event::GaveUp { retry_at_ms } => UnitEventKind::GaveUp {
            retry_in_s: secs(retry_at_ms),
        },
        Event::Starting { attempt } => UnitEventKind::Starting { attempt },
        Event::BudgetSpent { retry_at_ms } => UnitEventKind::BudgetSpent {
            retry_in_s: secs(retry_at_ms),
        },
        Event::Recovered => UnitEventKind::Recovered,
    }
}

/// Hands an event to the link; dropped when it cannot take it.
fn send(events: &dyn Sink, ev: &v1::Event) {
    match codec::encode(Kind::Event, ev) {
        Ok(payload) => {
            if !events.try_send(payload) {
                tracing::debug!("watchdog event not handed to MQTT");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode a watchdog event"),
    }
}
