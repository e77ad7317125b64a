//! Operator actions: the transition table, its refusals and the approval path. What the
//! actions do to devices (abort, resume) is tested with the engine in `engine.rs`.

use super::super::*;
use super::spec_with;

#[test]
fn operator_transition_table() {
    use OperatorAction as A;
    use RolloutStatus::*;
    // For each action, the status it leads to from [draft, awaiting approval, running,
    // paused, completed, aborted].
    let table: [(OperatorAction, [Option<RolloutStatus>; 6]); 6] = [
        (
            A::RequestApproval,
            [Some(AwaitingApproval), None, None, None, None, None],
        ),
        (A::Start, [Some(Running), None, None, None, None, None]),
        (A::Approve, [None, Some(Running), None, None, None, None]),
        (A::Pause, [None, None, Some(Paused), None, None, None]),
        (A::Resume, [None, None, None, Some(Running), None, None]),
        (
            A::Abort,
            [
                Some(Aborted),
                Some(Aborted),
                Some(Aborted),
                Some(Aborted),
                None,
                None,
            ],
        ),
    ];
    let spec = spec_with(|_| {});
    for (action, row) in table {
        for (from, want) in RolloutStatus::ALL.into_iter().zip(row) {
            assert_eq!(
                operator_transition(action, from),
                want,
                "{action:?} from {from:?}"
            );
            // The action functions follow the table, and refuse with the table's words.
            let rollout = RolloutView {
                status: from,
                ..RolloutView::draft()
            };
            let got = match action {
                A::RequestApproval => request_approval(&rollout),
                A::Start => start(&rollout, false),
                A::Approve => approve(&rollout),
                A::Pause => pause(&rollout),
                A::Resume => resume(&spec, &rollout, &[]),
                A::Abort => abort(&rollout, &[], false),
            };
            match want {
                Some(to) => assert_eq!(got.unwrap().rollout.status, to),
                None => assert_eq!(got.unwrap_err(), RefusedTransition::NotNow { action, from }),
            }
        }
    }
}

#[test]
fn refusals_read_clearly() {
    let completed = RolloutView {
        status: RolloutStatus::Completed,
        ..RolloutView::draft()
    };
    let spec = spec_with(|_| {});
    assert_eq!(
        resume(&spec, &completed, &[]).unwrap_err().to_string(),
        "cannot resume: the rollout is completed"
    );
    let awaiting = RolloutView {
        status: RolloutStatus::AwaitingApproval,
        ..RolloutView::draft()
    };
    assert_eq!(
        pause(&awaiting).unwrap_err().to_string(),
        "cannot pause: the rollout is awaiting approval"
    );
    assert_eq!(
        start(&RolloutView::draft(), true).unwrap_err(),
        RefusedTransition::ApprovalRequired
    );
    let aborted = RolloutView {
        status: RolloutStatus::Aborted,
        ..RolloutView::draft()
    };
    assert_eq!(
        abort(&aborted, &[], true).unwrap_err().to_string(),
        "cannot abort: the rollout is aborted"
    );
}

#[test]
fn approval_path_starts_at_the_canary() {
    let draft = RolloutView::draft();
    let asked = request_approval(&draft).unwrap();
    assert_eq!(asked.rollout.status, RolloutStatus::AwaitingApproval);
    let approved = approve(&asked.rollout).unwrap();
    assert_eq!(
        approved.rollout,
        RolloutView {
            status: RolloutStatus::Running,
            ..RolloutView::draft()
        }
    );
    assert_eq!(approved.reason, "approved and started");
}
