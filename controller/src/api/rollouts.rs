//! Rollouts: create (or preview) one, list, show, pause, resume, abort, approve
//! ([`crate::rollouts`]). Operators create and run rollouts; admins approve large ones.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::commands::targets;
use crate::api::extract::{Json, Path, Principal, Query, noted};
use crate::api::params::DevicePath;
use crate::api::params::bounded;
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::approvals::Policy;
use crate::model::approvals::ApprovalView;
use crate::model::rollouts::{
    DeviceApps, PlannedDeviceView, RolloutDetail, RolloutSettingsBody, RolloutSummary,
};
use crate::rollouts::service::{self, Action, Actor, RolloutRequest};
use crate::rollouts::state::RolloutStatus;
use crate::rollouts::views;
use crate::store::now_ms;

/// A rollout to create: the release (by id, or the newest of an app), the devices (by id
/// or by label selector: exactly one), and the settings (defaults for what is left out).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// The release to roll out.
    pub release_id: Option<i64>,
    /// …or the newest release of this app.
    pub app: Option<String>,
    /// Device ids (1–1000).
    pub devices: Option<Vec<String>>,
    /// Every unrevoked device whose labels include all of these.
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub settings: RolloutSettingsBody,
    /// Only show which devices would take part (nothing is stored).
    #[serde(default)]
    pub preview: bool,
}

/// A created or previewed rollout: the plan, and the rollout unless it was a preview.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedRollout {
    #[schema(required)]
    pub rollout: Option<RolloutDetail>,
    pub release_id: i64,
    pub app: String,
    pub release: u64,
    /// Every targeted device, in rollout order; incompatible ones say why.
    pub plan: Vec<PlannedDeviceView>,
    /// Set when the rollout waits for a second admin.
    #[schema(required)]
    pub approval: Option<ApprovalView>,
}

/// The rollout list's filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RolloutQuery {
    /// Only rollouts in this state: draft, awaiting_approval, running, paused, completed
    /// or aborted.
    pub status: Option<String>,
    /// Only rollouts of this release.
    pub release_id: Option<i64>,
    /// At most this many, newest first (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// A rollout's id in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RolloutPath {
    pub id: i64,
}

/// How to abort.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortRollout {
    /// Send devices that took the release back to the release they ran before.
    #[serde(default)]
    pub revert: bool,
}

/// Rollouts: what the caller asked is 400 (404 for an unknown release or rollout), an
/// action the rollout's state refuses or no device that can take the release 409; an
/// approval's own rules as for commands.
impl From<service::RolloutError> for Problem {
    fn from(e: service::RolloutError) -> Self {
        use service::RolloutError as E;
        match e {
            E::NotFound(_) | E::ReleaseNotFound(_) => Problem::not_found(e.to_string()),
            E::Invalid(_) => Problem::bad_request(e.to_string()),
            E::Targets(d) => d.into(),
            E::NoCompatible { .. } | E::Refused(_) | E::NoApproval(_) | E::Busy(_) => {
                Problem::conflict(e.to_string())
            }
            E::Approval(a) => a.into(),
            E::Corrupt(..) => Problem::internal(&e),
            E::Store(s) => s.into(),
        }
    }
}

/// Creates a rollout (or previews it with `preview: true`). It starts at once, or waits
/// for a second admin when it targets more devices than `approvals.device_threshold` or
/// the whole fleet.
#[utoipa::path(post, operation_id = "create_rollout", path = "/api/v1/rollouts", tag = "rollouts",
    request_body = NewRollout,
    responses(
        (status = 201, description = "Created: running, or waiting for approval", body = CreatedRollout),
        (status = 200, description = "The preview: nothing stored", body = CreatedRollout),
        (status = "4XX", description = "Invalid request (400), unknown release (404), no device can take it or nobody could approve it (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn create(
    State(st): State<AppState>,
    p: Principal,
    Json(body): Json<NewRollout>,
) -> Result<Response, Problem> {
    let targets = targets(body.devices.as_deref(), body.selector.as_ref())?;
    let settings = body.settings.to_settings().map_err(Problem::bad_request)?;
    let release_id = match (body.release_id, body.app.as_deref()) {
        (Some(id), None) => id,
        (None, Some(app)) => st
            .store
            .list_releases(Some(app))
            .await?
            .into_iter()
            .map(|r| (r.release, r.id))
            .max()
            .map(|(_, id)| id)
            .ok_or_else(|| Problem::not_found(format!("app {app:?} has no release")))?,
        _ => {
            return Err(Problem::bad_request(
                "give exactly one of release_id and app",
            ));
        }
    };
    let actor = p.actor();
    let created = service::create(
        &st.store,
        &Policy::from(&st.cfg.approvals),
        RolloutRequest {
            release_id,
            targets,
            settings,
        },
        Actor {
            name: &actor,
            user_id: Some(p.user.user_id),
        },
        body.preview,
    )
    .await?;
    let rollout = match &created.rollout {
        Some(r) => {
            st.live.rollout_changed(r.id);
            Some(views::detail(&st.store, r.id).await?)
        }
        None => None,
    };
    let out = CreatedRollout {
        release_id: created.release.id,
        app: created.release.app.clone(),
        release: created.release.release,
        plan: views::plan_view(&created.plan),
        approval: created.approval.as_ref().map(|a| a.view(now_ms())),
        rollout,
    };
    if body.preview {
        return Ok(axum::Json(out).into_response());
    }
    let note = match &out.rollout {
        Some(r) => format!(
            "rollout {} of release {} of {}: {}",
            r.rollout.id,
            out.release,
            out.app,
            r.rollout.reason.as_deref().unwrap_or_default()
        ),
        None => String::new(),
    };
    Ok(noted(note, (StatusCode::CREATED, axum::Json(out))))
}

/// Lists rollouts, newest first.
#[utoipa::path(get, operation_id = "list_rollouts", path = "/api/v1/rollouts", tag = "rollouts",
    params(RolloutQuery),
    responses((status = 200, description = "Rollouts", body = Vec<RolloutSummary>), Refused))]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<RolloutQuery>,
) -> Result<axum::Json<Vec<RolloutSummary>>, Problem> {
    let limit = bounded("limit", q.limit, 100, 1, 500)?;
    if let Some(s) = q.status.as_deref()
        && RolloutStatus::parse(s).is_none()
    {
        return Err(Problem::bad_request(format!(
            "unknown rollout status {s:?}"
        )));
    }
    Ok(axum::Json(
        views::list(&st.store, q.status.as_deref(), q.release_id, limit).await?,
    ))
}

/// One rollout: its batches, every device's state (with the failure reason and journal
/// tail) and its history.
#[utoipa::path(get, operation_id = "show_rollout", path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(RolloutPath),
    responses((status = 200, description = "The rollout", body = RolloutDetail),
        (status = "4XX", description = "No such rollout, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn show(
    State(st): State<AppState>,
    Path(RolloutPath { id }): Path<RolloutPath>,
) -> Result<axum::Json<RolloutDetail>, Problem> {
    Ok(axum::Json(views::detail(&st.store, id).await?))
}

async fn acted(st: &AppState, id: i64, action: Action, p: &Principal) -> Result<Response, Problem> {
    let row = service::act(&st.store, id, action, &p.actor()).await?;
    st.live.rollout_changed(id);
    let note = format!(
        "rollout {id}: {}",
        row.reason.as_deref().unwrap_or_default()
    );
    Ok(noted(note, axum::Json(views::detail(&st.store, id).await?)))
}

/// Pauses a running rollout: nothing more is sent; devices already sent the release finish.
#[utoipa::path(post, operation_id = "pause_rollout", path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    params(RolloutPath),
    responses((status = 200, description = "Paused", body = RolloutDetail),
        (status = "4XX", description = "No such rollout (404), not running (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn pause(
    State(st): State<AppState>,
    p: Principal,
    Path(RolloutPath { id }): Path<RolloutPath>,
) -> Result<Response, Problem> {
    acted(&st, id, Action::Pause, &p).await
}

/// Resumes a paused rollout. After a pause by its health rules, resuming accepts the
/// failures so far: the current batch no longer needs its threshold.
#[utoipa::path(post, operation_id = "resume_rollout", path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    params(RolloutPath),
    responses((status = 200, description = "Running again", body = RolloutDetail),
        (status = "4XX", description = "No such rollout (404), not paused (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn resume(
    State(st): State<AppState>,
    p: Principal,
    Path(RolloutPath { id }): Path<RolloutPath>,
) -> Result<Response, Problem> {
    acted(&st, id, Action::Resume, &p).await
}

/// Aborts a rollout for good: devices not sent anything stay as they are; with
/// `revert`, devices that took the release go back to the release they ran before.
#[utoipa::path(post, operation_id = "abort_rollout", path = "/api/v1/rollouts/{id}/abort", tag = "rollouts",
    params(RolloutPath),
    request_body = AbortRollout,
    responses((status = 200, description = "Aborted", body = RolloutDetail),
        (status = "4XX", description = "No such rollout (404), already finished (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn abort(
    State(st): State<AppState>,
    p: Principal,
    Path(RolloutPath { id }): Path<RolloutPath>,
    Json(body): Json<AbortRollout>,
) -> Result<Response, Problem> {
    acted(
        &st,
        id,
        Action::Abort {
            revert: body.revert,
        },
        &p,
    )
    .await
}

/// Approves a rollout that waits for a second admin (its approval request): the devices
/// are resolved again now, bound to the approval, and the rollout starts.
#[utoipa::path(post, operation_id = "approve_rollout", path = "/api/v1/rollouts/{id}/approve", tag = "rollouts",
    params(RolloutPath),
    responses((status = 200, description = "Approved and started", body = RolloutDetail),
        (status = "4XX", description = "Your own request or an API token (403), no such rollout (404), not waiting for approval (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn approve(
    State(st): State<AppState>,
    p: Principal,
    Path(RolloutPath { id }): Path<RolloutPath>,
) -> Result<Response, Problem> {
    crate::api::approvals::person(&p)?;
    let approval = service::approval_of(&st.store, id).await?;
    let actor = p.actor();
    let row = service::approve(
        &st.store,
        &approval,
        Actor {
            name: &actor,
            user_id: Some(p.user.user_id),
        },
    )
    .await?;
    st.live.rollout_changed(id);
    let note = format!(
        "rollout {id}: {}",
        row.reason.as_deref().unwrap_or_default()
    );
    Ok(noted(note, axum::Json(views::detail(&st.store, id).await?)))
}

/// A device's apps, as its agent last reported them (the release each runs and keeps), and
/// the rollouts it was part of, newest first, with its state, failure reason and journal
/// tail in each.
#[utoipa::path(get, operation_id = "device_apps", path = "/api/v1/devices/{id}/apps", tag = "rollouts",
    params(DevicePath),
    responses((status = 200, description = "The device's apps and rollouts", body = DeviceApps),
        (status = "4XX", description = "Invalid id, unknown device, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn device_apps(
    State(st): State<AppState>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<axum::Json<DeviceApps>, Problem> {
    views::device_apps(&st.store, id.as_str())
        .await?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(format!("no device {}", id.as_str())))
}
