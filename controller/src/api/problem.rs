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

/// Operator actions: the caller's mistakes are 400 (404 for an unknown device); anything
/// else is ours.
impl From<crate::admin::AdminError> for Problem {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match e {
            AdminError::Invalid(m) => Problem::bad_request(m),
            AdminError::Labels(e) => e.into(),
            AdminError::NoDevice(id) => Problem::not_found(format!("no device {id}")),
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

/// Commands: invalid actions and lifetimes are 400, unknown targets 404.
impl From<crate::commands::dispatch::DispatchError> for Problem {
    fn from(e: crate::commands::dispatch::DispatchError) -> Self {
        use crate::commands::dispatch::DispatchError;
        match e {
            DispatchError::Action(m) => Problem::bad_request(m),
            DispatchError::Ttl => {
                Problem::bad_request("ttl_s must be between 1 and 604800 seconds")
            }
            DispatchError::NoTarget(m) => Problem::not_found(m),
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
