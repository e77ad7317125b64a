//! Request extractors whose rejections are problem documents, and the request context the
//! guard hands to handlers (the signed-in principal and the client address).

use std::net::IpAddr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::problem::Problem;
use crate::model::session::SessionUser;

/// JSON body; a malformed body is a 400/415/422 problem that says what is wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => Err(Problem::new(rej.status(), rej.body_text())),
        }
    }
}

/// Query string; an invalid one is a 400 problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(Problem::bad_request(rej.body_text())),
        }
    }
}

/// Path parameters; an invalid one is a 400 problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rej) => Err(Problem::bad_request(rej.body_text())),
        }
    }
}

/// The client's address: the TCP peer, or the X-Forwarded-For client when the peer is a
/// trusted proxy. Set by the outermost middleware on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .ok_or_else(|| Problem::internal(&"client address missing from the request"))
    }
}

/// The signed-in user of a request, set by the guard for every non-public route: the
/// session's user as the store read it, and when the presented access token expires. For
/// an API token (automation), `api_token` is set and `user` stands for the token: its name
/// and role, a negative id that no user has, no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: SessionUser,
    /// When the access token this request presented expires, Unix seconds.
    pub token_expires_at: i64,
    /// Set when the request came with an API token rather than a user's access token.
    pub api_token: bool,
}

impl Principal {
    /// Who this is in the audit log: `user:NAME` or `token:NAME`.
    pub fn actor(&self) -> String {
        if self.api_token {
            format!("token:{}", self.user.name)
        } else {
            format!("user:{}", self.user.name)
        }
    }
}

impl std::ops::Deref for Principal {
    type Target = SessionUser;
    fn deref(&self) -> &SessionUser {
        &self.user
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("sign in first"))
    }
}

/// The device of a device route, set by the guard from the connection's verified client
/// certificate once the database confirmed it is not revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePrincipal(pub pifleet_shared::DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DevicePrincipal {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<DevicePrincipal>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("present the device certificate"))
    }
}

/// Extra text for the audit entry of a mutating request (e.g. the ids of created
/// commands); handlers put it in the response's extensions.
#[derive(Debug, Clone)]
pub struct AuditNote(pub String);

/// Adds an audit note to a response.
pub fn noted<R: axum::response::IntoResponse>(
    note: impl Into<String>,
    resp: R,
) -> axum::response::Response {
    let mut r = resp.into_response();
    r.extensions_mut().insert(AuditNote(note.into()));
    r
}
