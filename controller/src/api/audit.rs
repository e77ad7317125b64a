//! The audit log: a filtered listing, newest first, and a check of the whole hash chain.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::Query;
use crate::api::params::{MAX_TIME_MS, bounded};
use crate::api::problem::{Problem, Refused};
use crate::audit::{Break, Entry};
use crate::model::audit::AuditFilter;
use crate::store::AuditCheck;

/// Longest actor or action filter.
const MAX_FILTER_LEN: usize = 255;

/// Filters and page of the audit listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries by this actor, e.g. `user:alice` or `cli:root`.
    #[param(max_length = 255)]
    pub actor: Option<String>,
    /// Only entries of this action, e.g. `device.revoke`.
    #[param(max_length = 255)]
    pub action: Option<String>,
    /// Entries at or after this time, Unix ms.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Entries at or before this time, Unix ms.
    #[param(minimum = 0)]
    pub until: Option<i64>,
    /// Entries before this sequence number (to page backwards: the last `seq` seen).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// One audit entry.
pub type AuditEntry = Entry;

/// A page of audit entries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Sequence number of the newest entry in the log (absent when the log is empty).
    #[schema(required)]
    pub head: Option<i64>,
}

/// The result of checking the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// True when no entry was edited, inserted or deleted.
    pub intact: bool,
    /// Entries in the log.
    pub entries: i64,
    /// Sequence number where the chain breaks.
    #[schema(required)]
    pub broken_at: Option<i64>,
    /// What is wrong there.
    #[schema(required)]
    pub problem: Option<String>,
}

impl AuditQuery {
    /// Checks every parameter.
    pub fn validate(self) -> Result<AuditFilter, Problem> {
        for (name, v) in [("actor", &self.actor), ("action", &self.action)] {
            if v.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
                return Err(Problem::bad_request(format!(
                    "{name} must be at most {MAX_FILTER_LEN} bytes"
                )));
            }
        }
        for (name, v) in [("since", self.since), ("until", self.until)] {
            if v.is_some_and(|t| !(0..=MAX_TIME_MS).contains(&t)) {
                return Err(Problem::bad_request(format!(
                    "{name} must be Unix milliseconds between 0 and {MAX_TIME_MS}"
                )));
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since > until
        {
            return Err(Problem::bad_request("since must not be after until"));
        }
        if self.before.is_some_and(|b| b < 1) {
            return Err(Problem::bad_request("before must be at least 1"));
        }
        Ok(AuditFilter {
            actor: self.actor,
            action: self.action,
            since: self.since,
            until: self.until,
            before: self.before,
            limit: bounded("limit", self.limit, 100, 1, 1000)?,
        })
    }
}

/// Where a break is: the first entry that is not as it should be.
fn broken_at(b: &Break) -> i64 {
    match b {
        Break::Missing { expected, .. } => *expected,
        Break::Unlinked(seq) | Break::Modified(seq) => *seq,
        Break::Truncated { last, .. } => last.saturating_add(1),
    }
}

/// The verification report for a checked log.
pub fn report(check: &AuditCheck) -> VerifyReport {
    match &check.result {
        Ok(_) => VerifyReport {
            intact: true,
            entries: check.entries,
            broken_at: None,
            problem: None,
        },
        Err(b) => VerifyReport {
            intact: false,
            entries: check.entries,
            broken_at: Some(broken_at(b)),
            problem: Some(b.to_string()),
        },
    }
}

/// Lists audit entries, newest first.
#[utoipa::path(
    get,
    operation_id = "list_audit",
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        Refused,
    )
)]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<AuditPage>, Problem> {
    let filter = q.validate()?;
    let items = st.store.audit_page(&filter).await?;
    let head = st.store.audit_head().await?;
    Ok(axum::Json(AuditPage { items, head }))
}

/// Checks the whole hash chain; a broken chain is reported, not an error.
#[utoipa::path(
    get,
    operation_id = "verify_audit",
    path = "/api/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The verification result", body = VerifyReport),
        Refused,
    )
)]
pub async fn verify(State(st): State<AppState>) -> Result<axum::Json<VerifyReport>, Problem> {
    // Streams the log and hashes on the blocking pool: constant memory, async workers free.
    let check = st.store.verify_audit().await?;
    Ok(axum::Json(report(&check)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ChainVerifier;

    /// The report for a log held in memory, checked as the store checks one it streams.
    fn report_of(entries: &[Entry], head: Option<i64>) -> VerifyReport {
        let mut v = ChainVerifier::new();
        for e in entries {
            v.push(e);
        }
        let entries = v.seen();
        report(&AuditCheck {
            entries,
            result: v.finish(head),
        })
    }

    fn chain(n: i64) -> Vec<Entry> {
        crate::audit::test_chain(n, "user:admin", "127.0.0.1", 0)
    }

    #[test]
    fn reports() {
        let c = chain(3);
        let r = report_of(&c, Some(3));
        assert!(r.intact && r.entries == 3 && r.broken_at.is_none() && r.problem.is_none());
        let mut edited = c.clone();
        edited[1].detail = "changed".into();
        let r = report_of(&edited, Some(3));
        assert_eq!((r.intact, r.broken_at), (false, Some(2)));
        assert!(r.problem.is_some());
        let r = report_of(&c[..2], Some(3));
        assert_eq!((r.intact, r.entries, r.broken_at), (false, 2, Some(3)));
        let r = report_of(&[c[0].clone(), c[2].clone()], Some(3));
        assert_eq!(r.broken_at, Some(2));
        assert!(report_of(&[], None).intact);
    }

    #[test]
    fn query_bounds() {
        let f = AuditQuery::default().validate().unwrap();
        assert_eq!(f.limit, 100);
        let bad = [
            AuditQuery {
                limit: Some(0),
                ..Default::default()
            },
            AuditQuery {
                limit: Some(1001),
                ..Default::default()
            },
            AuditQuery {
                since: Some(10),
                until: Some(5),
                ..Default::default()
            },
            AuditQuery {
                since: Some(-1),
                ..Default::default()
            },
            AuditQuery {
                before: Some(0),
                ..Default::default()
            },
            AuditQuery {
                actor: Some("x".repeat(256)),
                ..Default::default()
            },
        ];
        for q in bad {
            let s = format!("{q:?}");
            assert!(q.validate().is_err(), "{s}");
        }
    }
}
