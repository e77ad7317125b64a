//! The one HTTP error type: every handler error becomes an RFC 9457 problem document here,
//! with a clear message for the client and no internals (those go to the log).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An HTTP error with a client-safe message.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// A stable machine-readable reason for clients that act on it (e.g. the dashboard
    /// sends a user to the password change page on `password_change_required`).
    pub code: Option<&'static str>,
    /// Seconds until a retry can succeed (423, 429).
    pub retry_after: Option<u64>,
}

/// The problem document, as served (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemDoc {
    /// Always `about:blank`: `title` is the HTTP reason phrase.
    pub r#type: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and, where it helps, what to do.
    pub detail: String,
    /// A stable reason code, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<String>,
}

/// The answer every operation may give to a refused request, for the OpenAPI document.
#[derive(Debug, utoipa::IntoResponses)]
pub enum Refused {
    /// Refused: invalid input, not signed in, not permitted, not found or in conflict; the
    /// problem document says which and why.
    #[response(status = "4XX", content_type = "application/problem+json")]
    Refused(ProblemDoc),
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            code: None,
            retry_after: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    /// 401: the request carries no valid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }
    /// An internal failure: logged in full, reported to the client without details.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        Problem::internal(&e)
    }
}

/// A revocation of an unknown device is 404; anything else is ours.
impl From<crate::pki::RevokeError> for Problem {
    fn from(e: crate::pki::RevokeError) -> Self {
        match e {
            crate::pki::RevokeError::NoDevice(_) => Problem::not_found(e.to_string()),
            other => Problem::internal(&other),
        }
    }
}

/// A bad token lifetime or device name is 400; anything else is ours.
impl From<crate::enroll::tokens::TokenError> for Problem {
    fn from(e: crate::enroll::tokens::TokenError) -> Self {
        match e {
            crate::enroll::tokens::TokenError::Invalid(m) => Problem::bad_request(m),
            other => Problem::internal(&other),
        }
    }
}

/// A bad name or weak password is 400, a taken name 409; a hashing failure is ours.
impl From<crate::auth::users::UserError> for Problem {
    fn from(e: crate::auth::users::UserError) -> Self {
        use crate::auth::users::UserError;
        match e {
            UserError::Invalid(m) => Problem::bad_request(m),
            UserError::Change(c) => c.into(),
            other => Problem::internal(&other),
        }
    }
}

/// User changes refused by the database state.
impl From<crate::store::users::UserChange> for Problem {
    fn from(e: crate::store::users::UserChange) -> Self {
        use crate::store::users::UserChange;
        match e {
            UserChange::Exists(_) | UserChange::LastAdmin => Problem::conflict(e.to_string()),
            UserChange::NoUser(_) => Problem::not_found(e.to_string()),
        }
    }
}

/// Commands: invalid actions and lifetimes are 400, unknown targets 404, a target waiting
/// for review 409.
impl From<crate::commands::dispatch::DispatchError> for Problem {
    fn from(e: crate::commands::dispatch::DispatchError) -> Self {
        use crate::commands::dispatch::DispatchError;
        match e {
            DispatchError::Action(m) => Problem::bad_request(m),
            DispatchError::Ttl => {
                Problem::bad_request("ttl_s must be between 1 and 604800 seconds")
            }
            DispatchError::NoTarget(m) => Problem::not_found(m),
            DispatchError::NeedsReview(..) => Problem::conflict(e.to_string()),
            DispatchError::Store(e) => Problem::internal(&e),
        }
    }
}

/// A locked account: 423 with Retry-After.
impl From<crate::auth::lockout::Locked> for Problem {
    fn from(e: crate::auth::lockout::Locked) -> Self {
        Problem::new(StatusCode::LOCKED, e.to_string()).with_retry_after(e.retry_after_s)
    }
}

/// Refused enrollments: a malformed request or CSR is 400, a token that cannot be used 403,
/// an id already enrolled 409; our own failures 500.
impl From<crate::enroll::Refusal> for Problem {
    fn from(e: crate::enroll::Refusal) -> Self {
        use crate::enroll::Refusal;
        use crate::store::EnrollRefusal;
        if !e.is_callers() {
            return Problem::internal(&e);
        }
        match e {
            Refusal::Token(EnrollRefusal::DeviceExists(_)) => Problem::conflict(e.to_string()),
            Refusal::OtherController | Refusal::Token(_) => Problem::forbidden(e.to_string()),
            _ => Problem::bad_request(e.to_string()),
        }
    }
}

/// Approval: nobody to approve 409 (the message names the setting), your own request
/// 403, unknown 404, already decided or expired 409; an unreadable stored request is ours.
impl From<crate::approvals::ApprovalError> for Problem {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        use crate::approvals::ApprovalError;
        match e {
            ApprovalError::TooFewAdmins { .. } | ApprovalError::NotPending { .. } => {
                Problem::conflict(e.to_string())
            }
            ApprovalError::OwnRequest => Problem::forbidden(e.to_string()),
            ApprovalError::NotFound(_) => Problem::not_found(e.to_string()),
            ApprovalError::Dispatch(d) => d.into(),
            ApprovalError::Corrupt(..) | ApprovalError::Store(_) => Problem::internal(&e),
        }
    }
}

/// A bad or taken API token name or lifetime is 400.
impl From<crate::auth::api_tokens::ApiTokenError> for Problem {
    fn from(e: crate::auth::api_tokens::ApiTokenError) -> Self {
        use crate::auth::api_tokens::ApiTokenError;
        match e {
            ApiTokenError::Invalid(m) => Problem::bad_request(m),
            ApiTokenError::Store(e) => e.into(),
        }
    }
}

/// Releases: what the caller sent is 400 (413 for an upload over the limit), the same
/// archive again or a release in use 409, unknown 404; storage and signing are ours.
impl From<crate::releases::ReleaseError> for Problem {
    fn from(e: crate::releases::ReleaseError) -> Self {
        use crate::releases::{GitError, IntakeError, ReleaseError};
        match &e {
            ReleaseError::Intake(IntakeError::UploadTooLarge { .. }) => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            ReleaseError::Intake(IntakeError::Io { .. })
            | ReleaseError::Git(GitError::Intake(IntakeError::Io { .. })) => Problem::internal(&e),
            ReleaseError::Invalid(_)
            | ReleaseError::Intake(_)
            | ReleaseError::Git(
                GitError::BadRevision(_)
                | GitError::BadUrl { .. }
                | GitError::UnknownRevision { .. }
                | GitError::FetchFailed { .. }
                | GitError::Mismatch { .. }
                | GitError::Intake(_),
            ) => Problem::bad_request(e.to_string()),
            ReleaseError::AlreadyExists { .. } | ReleaseError::InUse { .. } => {
                Problem::conflict(e.to_string())
            }
            ReleaseError::NotFound(_) => Problem::not_found(e.to_string()),
            _ => Problem::internal(&e),
        }
    }
}

/// Labels that break the rules are the caller's mistake.
impl From<crate::model::labels::LabelError> for Problem {
    fn from(e: crate::model::labels::LabelError) -> Self {
        Problem::bad_request(e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemDoc {
            r#type: "about:blank".to_owned(),
            title: self.status.canonical_reason().unwrap_or("error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.map(str::to_owned),
        };
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::UserError;
    use crate::enroll::Refusal;
    use crate::enroll::tokens::TokenError;
    use crate::store::EnrollRefusal;
    use crate::store::users::UserChange;

    fn status(p: impl Into<Problem>) -> u16 {
        p.into().status.as_u16()
    }

    #[test]
    fn caller_mistakes_are_4xx_and_internal_failures_500() {
        assert_eq!(status(UserError::Invalid("weak".into())), 400);
        assert_eq!(
            status(UserError::Change(UserChange::Exists("a".into()))),
            409
        );
        // A hashing failure is ours, never the caller's.
        assert_eq!(status(UserError::Hash("out of memory".into())), 500);
        assert_eq!(status(TokenError::Invalid("ttl".into())), 400);
        assert_eq!(
            status(TokenError::Ca {
                path: "ca.pem".into(),
                source: std::io::Error::other("gone"),
            }),
            500
        );
        assert_eq!(
            status(crate::pki::RevokeError::NoDevice("pi-1".into())),
            404
        );
    }

    #[test]
    fn enrollment_refusals_keep_their_statuses() {
        assert_eq!(status(Refusal::OtherController), 403);
        assert_eq!(status(Refusal::Token(EnrollRefusal::UsedToken)), 403);
        assert_eq!(
            status(Refusal::Token(EnrollRefusal::DeviceExists("pi-1".into()))),
            409
        );
        assert_eq!(
            status(Refusal::InvalidDeviceId(
                pifleet_shared::DeviceId::parse("NOT OK").unwrap_err()
            )),
            400
        );
        let internal = Refusal::Internal("disk full".into());
        assert!(!internal.is_callers());
        assert_eq!(internal.reason(), "internal error");
        assert_eq!(status(internal), 500);
    }
}
