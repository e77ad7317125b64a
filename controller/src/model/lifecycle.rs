//! The command lifecycle as a pure function, so every transition is in one table:
//! queued → sent → accepted → running → succeeded | failed | rejected, plus expired and
//! cancelled set by the controller. Final states never change. The states themselves
//! ([`Status`]) are a model type, so that the store can read them.

use pifleet_shared::command::Outcome;

pub use crate::model::commands::Status;

/// How far along a command is; final states all rank last.
fn rank(s: Status) -> u8 {
    match s {
        Status::Queued => 0,
        Status::Sent => 1,
        Status::Accepted => 2,
        Status::Running => 3,
        _ => 4,
    }
}

/// The status a device receipt moves a command to, or `None` to ignore the receipt.
///
/// - Progress only moves forward (a late "accepted" after "running" is ignored).
/// - A rejection counts only before the device accepted the command: a rejection of an
///   accepted command is a duplicate delivery refused as a replay, and must not hide the
///   real result. A "replayed" rejection of a sent command means the device accepted it
///   earlier (its acceptance receipt was lost): it moves the command to accepted.
/// - Final states never change; a receipt for a cancelled or expired command is ignored
///   (the agent refuses expired commands itself).
pub fn on_receipt(current: Status, outcome: &Outcome) -> Option<Status> {
    if current.is_final() {
        return None;
    }
    let next = match outcome {
        Outcome::Accepted => Status::Accepted,
        Outcome::Running => Status::Running,
        Outcome::Succeeded => Status::Succeeded,
        Outcome::Failed(_) => Status::Failed,
        // The device refused a re-delivery because it accepted this very command before
        // (signature verified, id in its journal): proof of acceptance, not a refusal.
        Outcome::Rejected(r) if r.starts_with("replayed") => Status::Accepted,
        Outcome::Rejected(_) => {
            return (rank(current) < rank(Status::Accepted)).then_some(Status::Rejected);
        }
    };
    (rank(next) > rank(current)).then_some(next)
}

/// May an operator cancel a command in this state? Only before it was sent: once on the
/// wire, the device may already be running it, and only expiry can stop a late delivery.
pub fn cancellable(current: Status) -> bool {
    current == Status::Queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn receipt_transitions() {
        let ok = Outcome::Succeeded;
        let fail = Outcome::Failed("x".into());
        let rej = Outcome::Rejected("not_allowed: unit not listed".into());
        let cases: &[(Status, Outcome, Option<Status>)] = &[
            (Queued, Outcome::Accepted, Some(Accepted)),
            (Sent, Outcome::Accepted, Some(Accepted)),
            (Sent, Outcome::Running, Some(Running)),
            (Sent, ok.clone(), Some(Succeeded)),
            (Sent, rej.clone(), Some(Rejected)),
            (Queued, rej.clone(), Some(Rejected)),
            (Accepted, Outcome::Running, Some(Running)),
            (Accepted, rej.clone(), None),
            (
                Sent,
                Outcome::Rejected("replayed: seen before".into()),
                Some(Accepted),
            ),
            (
                Running,
                Outcome::Rejected("replayed: seen before".into()),
                None,
            ),
            (Running, Outcome::Accepted, None),
            (Running, Outcome::Running, None),
            (Running, ok.clone(), Some(Succeeded)),
            (Running, fail.clone(), Some(Failed)),
            (Running, rej.clone(), None),
            (Succeeded, fail.clone(), None),
            (Failed, ok.clone(), None),
            (Rejected, ok.clone(), None),
            (Expired, ok.clone(), None),
            (Cancelled, Outcome::Accepted, None),
        ];
        for (cur, outcome, want) in cases {
            assert_eq!(on_receipt(*cur, outcome), *want, "{cur:?} + {outcome:?}");
        }
    }

    #[test]
    fn names_roundtrip_and_cancel_rule() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(cancellable(s), s == Queued);
        }
    }
}
