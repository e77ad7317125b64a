//! What the agents' service watchdog reports about allowlisted units, as the API shows it.

use pifleet_shared::proto::v1::UnitEventKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One watchdog event of a device, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitEvent {
    pub unit: String,
    /// `crash_loop`, `flapping`, `gave_up`, `starting`, `budget_spent` or `recovered`.
    pub kind: String,
    /// What happened, in words ("3 restarts within the watch window").
    pub detail: String,
    /// When the controller received it, Unix ms.
    pub at: i64,
}

/// A device's recent watchdog events, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnitEvents {
    pub events: Vec<UnitEvent>,
    /// Units whose newest event is a crash loop (or systemd giving up on them) reported
    /// within the last [`CRASH_LOOP_RECENT_MS`] and not followed by a recovery.
    pub crash_looping: Vec<String>,
}

/// How long a crash loop counts as current after it was reported (the agent reports an
/// episode once, when it starts).
pub const CRASH_LOOP_RECENT_MS: i64 = 15 * 60 * 1000;

/// The event's detail in words.
pub fn detail(kind: &UnitEventKind) -> String {
    match *kind {
        UnitEventKind::CrashLoop { restarts } => {
            format!("{restarts} restarts by systemd within the watch window")
        }
        UnitEventKind::Flapping { transitions } => {
            format!("{transitions} ups and downs within the watch window")
        }
        UnitEventKind::GaveUp { retry_in_s } => {
            format!("systemd gave up (start-limit-hit); the watchdog starts it in {retry_in_s} s")
        }
        UnitEventKind::Starting { attempt } => {
            format!("the watchdog starts it (attempt {attempt})")
        }
        UnitEventKind::BudgetSpent { retry_in_s } => {
            format!("the watchdog's daily budget of starts is spent; next start in {retry_in_s} s")
        }
        UnitEventKind::Recovered => "stayed up after the watchdog's starts".to_owned(),
    }
}

/// Whether an event of `kind` means the unit is in trouble (as opposed to recovered or
/// merely being started).
pub fn is_trouble(kind: &str) -> bool {
    matches!(kind, "crash_loop" | "gave_up" | "budget_spent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_detail() {
        let table = [
            (UnitEventKind::CrashLoop { restarts: 3 }, "3 restarts"),
            (
                UnitEventKind::Flapping { transitions: 6 },
                "6 ups and downs",
            ),
            (UnitEventKind::GaveUp { retry_in_s: 60 }, "in 60 s"),
            (UnitEventKind::Starting { attempt: 2 }, "attempt 2"),
            (
                UnitEventKind::BudgetSpent { retry_in_s: 9 },
                "next start in 9 s",
            ),
            (UnitEventKind::Recovered, "stayed up"),
        ];
        for (kind, needle) in table {
            assert!(detail(&kind).contains(needle), "{kind:?}");
        }
        assert!(is_trouble("crash_loop") && is_trouble("gave_up"));
        assert!(!is_trouble("recovered") && !is_trouble("starting"));
    }
}
