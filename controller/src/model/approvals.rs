//! Two-person approval: what a request waiting for a second admin is, and where it stands.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of action waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// A command to more devices than `approvals.device_threshold`, or to the whole fleet.
    Command,
    /// A rollout to more devices than `approvals.device_threshold`, or to the whole fleet.
    Rollout,
}

impl ApprovalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Rollout => "rollout",
        }
    }
}

impl TryFrom<String> for ApprovalKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "command" => Ok(Self::Command),
            "rollout" => Ok(Self::Rollout),
            _ => Err(format!("unknown approval kind {s:?}")),
        }
    }
}

/// Where a request stands. `expired` is never stored: a pending request past its expiry
/// shows as expired and can no longer be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a second admin.
    Pending,
    /// Approved; being carried out.
    Approved,
    /// Approved and carried out.
    Done,
    /// Approved, but carrying it out failed (see `outcome`).
    Failed,
    /// Refused by an admin.
    Rejected,
    /// Not decided in time.
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }

    /// The status to show at `now_ms`: a pending request past `expires_at` is expired.
    pub fn at(self, expires_at: i64, now_ms: i64) -> Self {
        if self == Self::Pending && expires_at <= now_ms {
            Self::Expired
        } else {
            self
        }
    }
}

impl TryFrom<String> for ApprovalStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            "rejected" => Ok(Self::Rejected),
            "expired" => Ok(Self::Expired),
            _ => Err(format!("unknown approval status {s:?}")),
        }
    }
}

/// A request as the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// 32 lowercase hex.
    pub id: String,
    pub kind: ApprovalKind,
    /// What it does, to how many devices.
    pub summary: String,
    /// Devices it targeted when requested.
    pub device_count: i64,
    /// The exact request.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// Who asked (`user:NAME` or `cli:USER`).
    pub requested_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: ApprovalStatus,
    #[schema(required)]
    pub decided_by: Option<String>,
    #[schema(required)]
    pub decided_at: Option<i64>,
    /// The device set bound when it was approved.
    #[schema(required)]
    pub targets: Option<Vec<String>>,
    /// What carrying it out did, or why it failed.
    #[schema(required)]
    pub outcome: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_pending_expires() {
        for s in [
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Done,
            ApprovalStatus::Failed,
            ApprovalStatus::Rejected,
            ApprovalStatus::Expired,
        ] {
            assert_eq!(ApprovalStatus::try_from(s.as_str().to_owned()), Ok(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
        assert!(ApprovalStatus::try_from("maybe".to_owned()).is_err());
        assert_eq!(ApprovalStatus::Pending.at(100, 99), ApprovalStatus::Pending);
        assert_eq!(
            ApprovalStatus::Pending.at(100, 100),
            ApprovalStatus::Expired
        );
        assert_eq!(ApprovalStatus::Done.at(100, 200), ApprovalStatus::Done);
        assert_eq!(
            ApprovalKind::try_from("command".to_owned()),
            Ok(ApprovalKind::Command)
        );
    }
}
