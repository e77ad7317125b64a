//! Rollouts against the store: creating one (its plan, and an approval request when it is
//! large), operator actions, approval, and one decision of the runner ([`step`]). Every
//! change is decided by the pure engine on what was read and written conditionally on
//! it, so the runner, the API and the command line can act at once without losing a
//! change: a write that lost is decided again from what won. The runner's decision and the
//! device changes it writes are in [`super::step`].

use std::collections::HashMap;

use pifleet_shared::DeviceId;
use serde::{Deserialize, Serialize};

use super::actions::{RefusedTransition, Transition, abort, approve as approve_transition};
use super::plan::{Plan, plan};
use super::spec::{InvalidSpec, RolloutSettings, RolloutSpec, assign_batches};
use super::state::{DeviceState, RolloutStatus};
use super::step::Changes;
use super::stored::{Loaded, fields_of};
use crate::approvals::{self, ApprovalError, Policy, Request};
use crate::commands::dispatch::{DispatchError, Targets};
use crate::model::approvals::{ApprovalKind, ApprovalStatus};
use crate::store::approvals::ApprovalRow;
use crate::store::rollouts::{NewRollout, NewRolloutDevice, RolloutRow, RolloutSave, Saved};
use crate::store::{ReleaseRow, Store, StoreError, now_ms};

/// A conditional write that lost is decided again this many times before giving up.
pub(super) const ATTEMPTS: usize = 8;
/// The actor of the runner's own decisions in a rollout's history.
pub const RUNNER: &str = "rollouts";

/// Why a rollout request or action was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout {0}")]
    NotFound(i64),
    #[error("no release {0}")]
    ReleaseNotFound(i64),
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
    #[error(transparent)]
    Targets(#[from] DispatchError),
    #[error(
        "none of the {targeted} targeted devices can take release {release} of {app}: {reasons}"
    )]
    NoCompatible {
        targeted: usize,
        app: String,
        release: u64,
        reasons: String,
    },
    #[error(transparent)]
    Refused(#[from] RefusedTransition),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error("rollout {0} is not waiting for approval")]
    NoApproval(i64),
    #[error("rollout {0} kept changing while this was decided; try again")]
    Busy(i64),
    #[error("stored rollout {0} is unreadable: {1}")]
    Corrupt(i64, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a new rollout asks for.
#[derive(Debug, Clone)]
pub struct RolloutRequest {
    pub release_id: i64,
    pub targets: Targets,
    pub settings: RolloutSettings,
}

/// A created (or previewed) rollout.
#[derive(Debug, Clone)]
pub struct Created {
    /// `None` for a preview.
    pub rollout: Option<RolloutRow>,
    pub plan: Plan,
    pub release: ReleaseRow,
    /// The approval request, when the rollout waits for one.
    pub approval: Option<ApprovalRow>,
}

/// An approval request for a rollout, as stored: it binds the release by its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ApprovalRequest {
    rollout: i64,
    release_id: i64,
    manifest_sha256: String,
    targets: Targets,
}

/// Who asks or acts: the audit actor and, through the API, the user's id.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub user_id: Option<i64>,
}

/// Plans a rollout and, unless `preview`, stores it: running at once, or waiting for a
/// second admin when the approval policy says so.
pub async fn create(
    store: &Store,
    policy: &Policy,
    req: RolloutRequest,
    actor: Actor<'_>,
    preview: bool,
) -> Result<Created, RolloutError> {
    let spec = RolloutSpec::new(req.settings.clone())?;
    let release = store
        .release(req.release_id)
        .await?
        .ok_or(RolloutError::ReleaseNotFound(req.release_id))?;
    let plan = plan(store, &release, &req.targets).await?;
    if preview {
        return Ok(Created {
            rollout: None,
            plan,
            release,
            approval: None,
        });
    }
    no_compatible(&plan, &release)?;
    let needs_approval = policy.needs_approval(&plan.resolved);
    if needs_approval {
        approvals::check_admins(store, policy, &plan.resolved).await?;
    }
    let settings = serde_json::to_string(spec.settings()).map_err(StoreError::from)?;
    let selector = serde_json::to_string(&req.targets).map_err(StoreError::from)?;
    let (status, reason, devices) = if needs_approval {
        (
            RolloutStatus::AwaitingApproval,
            format!(
                "created, waiting for a second admin: {}",
                policy.why(&plan.resolved)
            ),
            planned_devices(&spec, &plan),
        )
    } else {
        (
            RolloutStatus::Running,
            format!(
                "created and started: {} devices, {} incompatible",
                plan.compatible_count(),
                plan.devices.len() - plan.compatible_count()
            ),
            planned_devices(&spec, &plan),
        )
    };
    let id = store
        .insert_rollout(
            &NewRollout {
                release_id: release.id,
                selector: &selector,
                settings: &settings,
                status: status.as_str(),
                approval_id: None,
                created_by: actor.name,
                reason: &reason,
            },
            &devices,
        )
        .await?
        .ok_or(RolloutError::ReleaseNotFound(release.id))?;
    let approval = if needs_approval {
        let request = serde_json::to_string(&ApprovalRequest {
            rollout: id,
            release_id: release.id,
            manifest_sha256: release.manifest_sha256.clone(),
            targets: req.targets.clone(),
        })
        .map_err(StoreError::from)?;
        let summary = format!(
            "rollout {id}: release {} of {} to {} devices ({})",
            release.release,
            release.app,
            plan.compatible_count(),
            policy.why(&plan.resolved)
        );
        let row = approvals::request_approval(
            store,
            policy,
            &plan.resolved,
            &Request {
                kind: ApprovalKind::Rollout,
                request: &request,
                summary: &summary,
                device_count: plan.compatible_count(),
            },
            actor.name,
            actor.user_id,
        )
        .await?;
        store.set_rollout_approval(id, &row.id).await?;
        Some(row)
    } else {
        None
    };
    let rollout = store.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    Ok(Created {
        rollout: Some(rollout),
        plan,
        release,
        approval,
    })
}

fn no_compatible(plan: &Plan, release: &ReleaseRow) -> Result<(), RolloutError> {
    if plan.compatible_count() > 0 {
        return Ok(());
    }
    let mut reasons: Vec<String> = plan
        .devices
        .iter()
        .filter_map(|d| {
            d.incompatible
                .as_ref()
                .map(|w| format!("{}: {w}", d.device))
        })
        .take(5)
        .collect();
    if plan.devices.len() > reasons.len() {
        reasons.push("…".into());
    }
    Err(RolloutError::NoCompatible {
        targeted: plan.devices.len(),
        app: release.app.clone(),
        release: release.release,
        reasons: reasons.join("; "),
    })
}

/// The plan's devices as stored: compatible ones in their batches, in plan order;
/// incompatible ones after them, with the reason.
fn planned_devices(spec: &RolloutSpec, plan: &Plan) -> Vec<NewRolloutDevice> {
    let mut ids = Vec::new();
    let mut by_id = HashMap::new();
    for d in plan.compatible() {
        if let Ok(id) = DeviceId::parse(&d.device) {
            ids.push(id);
            by_id.insert(d.device.as_str(), d);
        }
    }
    let mut out: Vec<NewRolloutDevice> = assign_batches(spec, &ids)
        .into_iter()
        .enumerate()
        .map(|(position, (id, batch))| {
            let planned = by_id.get(id.as_str());
            NewRolloutDevice {
                device_id: id.as_str().to_owned(),
                position: i64::try_from(position).unwrap_or(i64::MAX),
                batch: i64::from(batch),
                state: DeviceState::Pending.as_str().to_owned(),
                revertible: planned.is_some_and(|p| p.revertible),
                previous_release: planned
                    .and_then(|p| p.current_release)
                    .and_then(|r| i64::try_from(r).ok()),
                reason: None,
            }
        })
        .collect();
    let first = out.len();
    for (i, d) in plan
        .devices
        .iter()
        .filter(|d| d.incompatible.is_some())
        .enumerate()
    {
        out.push(NewRolloutDevice {
            device_id: d.device.clone(),
            position: i64::try_from(first + i).unwrap_or(i64::MAX),
            batch: 0,
            state: DeviceState::Incompatible.as_str().to_owned(),
            revertible: false,
            previous_release: None,
            reason: d.incompatible.clone(),
        });
    }
    out
}

/// An operator's action on a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort { revert: bool },
}

/// Pauses, resumes or aborts a rollout; returns it as it is after.
pub async fn act(
    store: &Store,
    id: i64,
    action: Action,
    actor: &str,
) -> Result<RolloutRow, RolloutError> {
    for _ in 0..ATTEMPTS {
        let l = load(store, id).await?;
        let t = match action {
            Action::Pause => super::actions::pause(&l.view)?,
            Action::Resume => super::actions::resume(&l.spec, &l.view, &l.devices)?,
            Action::Abort { revert } => abort(&l.view, &l.devices, revert)?,
        };
        if apply_transition(store, &l, &t, actor).await? == Saved::Written {
            return store.rollout(id).await?.ok_or(RolloutError::NotFound(id));
        }
    }
    Err(RolloutError::Busy(id))
}

/// Writes an operator's transition: the rollout's fields, untouched devices (their queued
/// deploy cancelled) and reverts (with their commands).
async fn apply_transition(
    store: &Store,
    l: &Loaded,
    t: &Transition,
    actor: &str,
) -> Result<Saved, RolloutError> {
    let now = now_ms();
    let mut view = l.view;
    let mut devices = l.devices.clone();
    t.apply(&mut view, &mut devices, now);
    let mut writer = Changes::new(store, l);
    writer.revert(&t.revert, &mut devices).await?;
    let (changes, commands) = writer.finish(&devices);
    // Decide again at once: a resumed rollout sends its next devices without waiting.
    let fields = fields_of(&view, Some(now));
    Ok(store
        .save_rollout(
            l.row.id,
            l.row.version,
            &RolloutSave {
                fields: Some(&fields),
                devices: &changes,
                commands: &commands,
                actor,
                reason: Some(&t.reason),
            },
        )
        .await?)
}

/// Approves the approval request of a rollout: resolves its targets again now, binds that
/// device set to the approval, and starts the rollout.
pub async fn approve(
    store: &Store,
    approval_id: &str,
    actor: Actor<'_>,
) -> Result<RolloutRow, RolloutError> {
    let row = approvals::pending(store, approval_id, actor.name, actor.user_id).await?;
    let req: ApprovalRequest = serde_json::from_str(&row.request)
        .map_err(|e| ApprovalError::Corrupt(approval_id.to_owned(), e.to_string()))?;
    let fail = |why: String| async move {
        store
            .approval_outcome(approval_id, ApprovalStatus::Failed, &why)
            .await
    };
    let l = load(store, req.rollout).await?;
    if l.view.status != RolloutStatus::AwaitingApproval {
        return Err(RolloutError::NoApproval(req.rollout));
    }
    let release = store.release(req.release_id).await?;
    let Some(release) = release.filter(|r| r.manifest_sha256 == req.manifest_sha256) else {
        fail("the release is gone".into()).await?;
        return Err(RolloutError::ReleaseNotFound(req.release_id));
    };
    let plan = match plan(store, &release, &req.targets).await {
        Ok(p) => p,
        Err(e) => {
            fail(e.to_string()).await?;
            return Err(e);
        }
    };
    if let Err(e) = no_compatible(&plan, &release) {
        fail(e.to_string()).await?;
        return Err(e);
    }
    let bound: Vec<String> = plan.compatible().map(|d| d.device.clone()).collect();
    if !store
        .decide_approval(
            approval_id,
            ApprovalStatus::Approved,
            actor.name,
            Some(&bound),
        )
        .await?
    {
        return Err(approvals::lost(store, approval_id).await.into());
    }
    let t = approve_transition(&l.view)?;
    let devices = planned_devices(&l.spec, &plan);
    let reason = format!(
        "approved by {}: started with {} devices, {} incompatible",
        actor.name,
        plan.compatible_count(),
        plan.devices.len() - plan.compatible_count()
    );
    let saved = store
        .bind_rollout_devices(
            l.row.id,
            l.row.version,
            &fields_of(&t.rollout, Some(now_ms())),
            &devices,
            actor.name,
            &reason,
        )
        .await?;
    if saved == Saved::Stale {
        fail("the rollout changed while it was approved".into()).await?;
        return Err(RolloutError::Busy(l.row.id));
    }
    store
        .approval_outcome(
            approval_id,
            ApprovalStatus::Done,
            &format!("rollout {} started", l.row.id),
        )
        .await?;
    store
        .rollout(l.row.id)
        .await?
        .ok_or(RolloutError::NotFound(l.row.id))
}

/// Rejects a rollout's approval request; the rollout is aborted, nothing was sent.
pub async fn reject(
    store: &Store,
    approval_id: &str,
    actor: Actor<'_>,
) -> Result<(), RolloutError> {
    let row = approvals::reject(store, approval_id, actor.name, actor.user_id).await?;
    let req: ApprovalRequest = serde_json::from_str(&row.request)
        .map_err(|e| ApprovalError::Corrupt(approval_id.to_owned(), e.to_string()))?;
    for _ in 0..ATTEMPTS {
        let l = load(store, req.rollout).await?;
        if l.view.status.is_final() {
            return Ok(());
        }
        let mut t = abort(&l.view, &l.devices, false)?;
        t.reason = format!("approval rejected by {}", actor.name);
        if apply_transition(store, &l, &t, actor.name).await? == Saved::Written {
            return Ok(());
        }
    }
    Err(RolloutError::Busy(req.rollout))
}

/// The pending approval request of a rollout, if it waits for one.
pub async fn approval_of(store: &Store, id: i64) -> Result<String, RolloutError> {
    let row = store.rollout(id).await?.ok_or(RolloutError::NotFound(id))?;
    match (row.status.as_str(), row.approval_id) {
        ("awaiting_approval", Some(a)) => Ok(a),
        _ => Err(RolloutError::NoApproval(id)),
    }
}

pub(super) async fn load(store: &Store, id: i64) -> Result<Loaded, RolloutError> {
    let row = store
        .rollout_for_update(id)
        .await?
        .ok_or(RolloutError::NotFound(id))?;
    let rows = store.rollout_devices(id, true).await?;
    Loaded::read(row, rows).map_err(|e| RolloutError::Corrupt(id, e))
}
