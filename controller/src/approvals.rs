//! Two-person approval of fleet-wide actions. A command to more devices than
//! `approvals.device_threshold` — or whose selector matches the whole fleet — is not sent:
//! it is stored as a request, exactly as asked, until a second admin approves it. The one
//! who asked cannot approve it; an approval binds the request and the device set resolved
//! at that moment, and only then are the commands created; a request expires after
//! `approvals.expiry_s`. With fewer than two enabled admins such a request is refused, since
//! nobody could approve it. The command line is held to the same rule: it can ask, and an
//! admin signed in to the API or the dashboard decides.

use std::time::Duration;

use pifleet_shared::command::Action;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::commands::dispatch::{DispatchError, Dispatcher, Resolved, Targets, resolve_targets};
use crate::config::ApprovalsConfig;
use crate::model::approvals::{ApprovalKind, ApprovalStatus};
use crate::model::commands::ActionSpec;
use crate::store::approvals::{ApprovalRow, NewApproval};
use crate::store::{Store, StoreError, now_ms};

/// When approval is needed.
#[derive(Debug, Clone)]
pub struct Policy {
    pub device_threshold: u32,
    pub whole_fleet: bool,
    pub expiry: Duration,
}

impl From<&ApprovalsConfig> for Policy {
    fn from(c: &ApprovalsConfig) -> Self {
        Self {
            device_threshold: c.device_threshold,
            whole_fleet: c.whole_fleet,
            expiry: c.expiry(),
        }
    }
}

impl Policy {
    /// Whether an action on these devices waits for a second admin.
    pub fn needs_approval(&self, r: &Resolved) -> bool {
        r.devices.len() > usize::try_from(self.device_threshold).unwrap_or(usize::MAX)
            || (self.whole_fleet && r.whole_fleet)
    }

    /// Why, in words that name the setting.
    pub fn why(&self, r: &Resolved) -> String {
        if self.whole_fleet && r.whole_fleet {
            "its selector matches the whole fleet (approvals.whole_fleet)".into()
        } else {
            format!(
                "it targets {} devices, more than approvals.device_threshold = {}",
                r.devices.len(),
                self.device_threshold
            )
        }
    }
}

/// Why an approval request or decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Nobody could approve it: the caller must change the setting or add an admin.
    #[error(
        "{why}, so a second admin must approve it, but there are fewer than two enabled admins; add an admin or raise approvals.device_threshold"
    )]
    TooFewAdmins { why: String },
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("approval request {id} is {status}, not pending")]
    NotPending { id: String, status: &'static str },
    #[error("the admin who asked cannot approve or reject their own request")]
    OwnRequest,
    /// The request cannot be carried out as it stands (e.g. its devices are gone).
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A stored request we cannot read: ours, not the caller's.
    #[error("stored approval request {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command request as stored: the targets as asked (resolved again at approval), the
/// action, and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    pub targets: Targets,
    pub action: ActionSpec,
    pub ttl_s: u64,
}

/// Stores a command request that waits for approval.
pub async fn request_command(
    store: &Store,
    policy: &Policy,
    requested_by: &str,
    requester_id: Option<i64>,
    req: &CommandRequest,
    resolved: &Resolved,
) -> Result<ApprovalRow, ApprovalError> {
    let action = Action::from(req.action.clone());
    let summary = format!(
        "{} command to {} devices ({})",
        action.kind(),
        resolved.devices.len(),
        policy.why(resolved)
    );
    let request = serde_json::to_string(req).map_err(StoreError::from)?;
    let new = Request {
        kind: ApprovalKind::Command,
        request: &request,
        summary: &summary,
        device_count: resolved.devices.len(),
    };
    request_approval(store, policy, resolved, &new, requested_by, requester_id).await
}

/// What waits for approval, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: ApprovalKind,
    /// The exact request (JSON).
    pub request: &'a str,
    pub summary: &'a str,
    pub device_count: usize,
}

/// Refuses when fewer than two admins could decide.
pub async fn check_admins(
    store: &Store,
    policy: &Policy,
    resolved: &Resolved,
) -> Result<(), ApprovalError> {
    if store.enabled_admin_count().await? < 2 {
        return Err(ApprovalError::TooFewAdmins {
            why: policy.why(resolved),
        });
    }
    Ok(())
}

/// Stores a request that waits for a second admin.
pub async fn request_approval(
    store: &Store,
    policy: &Policy,
    resolved: &Resolved,
    req: &Request<'_>,
    requested_by: &str,
    requester_id: Option<i64>,
) -> Result<ApprovalRow, ApprovalError> {
    check_admins(store, policy, resolved).await?;
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let id = pifleet_shared::token::to_hex(&raw);
    let expires_at =
        now_ms().saturating_add(i64::try_from(policy.expiry.as_millis()).unwrap_or(i64::MAX));
    store
        .insert_approval(&NewApproval {
            id: &id,
            kind: req.kind,
            request: req.request,
            summary: req.summary,
            device_count: i64::try_from(req.device_count).unwrap_or(i64::MAX),
            requested_by,
            requester_id,
            expires_at,
        })
        .await?;
    store
        .approval(&id)
        .await?
        .ok_or_else(|| ApprovalError::NotFound(id.clone()))
}

/// Loads a request that is still pending and may be decided by `decided_by` (an audit
/// actor: `user:NAME`, or `cli:USER` on the command line) with user id `decider_id`: the
/// requester can decide neither as the same user nor as the same actor.
pub async fn pending(
    store: &Store,
    id: &str,
    decided_by: &str,
    decider_id: Option<i64>,
) -> Result<ApprovalRow, ApprovalError> {
    let row = store
        .approval(id)
        .await?
        .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
    if row.requested_by == decided_by || (decider_id.is_some() && row.requester_id == decider_id) {
        return Err(ApprovalError::OwnRequest);
    }
    let status = row.status.at(row.expires_at, now_ms());
    if status != ApprovalStatus::Pending {
        return Err(ApprovalError::NotPending {
            id: id.to_owned(),
            status: status.as_str(),
        });
    }
    Ok(row)
}

/// After a conditional update lost: what the request is now.
pub async fn lost(store: &Store, id: &str) -> ApprovalError {
    match store.approval(id).await {
        Ok(Some(row)) => ApprovalError::NotPending {
            id: id.to_owned(),
            status: row.status.at(row.expires_at, now_ms()).as_str(),
        },
        Ok(None) => ApprovalError::NotFound(id.to_owned()),
        Err(e) => e.into(),
    }
}

/// Rejects a pending request.
pub async fn reject(
    store: &Store,
    id: &str,
    decided_by: &str,
    decider_id: Option<i64>,
) -> Result<ApprovalRow, ApprovalError> {
    pending(store, id, decided_by, decider_id).await?;
    if !store
        .decide_approval(id, ApprovalStatus::Rejected, decided_by, None)
        .await?
    {
        return Err(lost(store, id).await);
    }
    store
        .approval(id)
        .await?
        .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))
}

/// Approves a pending request and carries it out: resolves its targets now, binds that
/// device set to the approval, and creates the commands for exactly those devices.
pub async fn approve(
    store: &Store,
    dispatcher: &Dispatcher,
    id: &str,
    decided_by: &str,
    decider_id: Option<i64>,
) -> Result<ApprovalRow, ApprovalError> {
    let row = pending(store, id, decided_by, decider_id).await?;
    let req: CommandRequest = serde_json::from_str(&row.request)
        .map_err(|e| ApprovalError::Corrupt(id.to_owned(), e.to_string()))?;
    let resolved = resolve_targets(store, &req.targets).await?;
    if !store
        .decide_approval(
            id,
            ApprovalStatus::Approved,
            decided_by,
            Some(&resolved.devices),
        )
        .await?
    {
        return Err(lost(store, id).await);
    }
    let created = dispatcher
        .submit(
            &Targets::Devices(resolved.devices),
            Action::from(req.action),
            Duration::from_secs(req.ttl_s),
        )
        .await;
    match created {
        Ok(cmds) => {
            let ids: Vec<String> = cmds.iter().map(|(c, _)| c.to_string()).collect();
            store
                .approval_outcome(
                    id,
                    ApprovalStatus::Done,
                    &format!("command ids: {}", ids.join(", ")),
                )
                .await?;
        }
        Err(e) => {
            store
                .approval_outcome(id, ApprovalStatus::Failed, &e.to_string())
                .await?;
            return Err(e.into());
        }
    }
    store
        .approval(id)
        .await?
        .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(n: usize, whole_fleet: bool) -> Resolved {
        Resolved {
            devices: (0..n).map(|i| format!("pi-{i}")).collect(),
            whole_fleet,
        }
    }

    #[test]
    fn the_policy_counts_devices_and_the_whole_fleet() {
        let p = Policy {
            device_threshold: 10,
            whole_fleet: true,
            expiry: Duration::from_secs(1),
        };
        assert!(!p.needs_approval(&resolved(10, false)));
        assert!(p.needs_approval(&resolved(11, false)));
        assert!(p.needs_approval(&resolved(3, true)));
        assert!(p.why(&resolved(3, true)).contains("approvals.whole_fleet"));
        assert!(
            p.why(&resolved(11, false))
                .contains("approvals.device_threshold = 10")
        );
        let lax = Policy {
            whole_fleet: false,
            ..p
        };
        assert!(!lax.needs_approval(&resolved(3, true)));
    }
}
