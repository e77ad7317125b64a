//! Application releases: upload an archive (streamed to disk, never held in memory), make
//! one from a git commit, list, show and delete ([`crate::releases`]). Operators make
//! releases; admins delete them.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::StreamExt;
use pifleet_shared::release::{HealthSpec, Probe};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{Json, Path, Principal, Query, noted};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::releases::{self, Input, IntakeError, IntakeOptions, NewRelease, ReleaseError};
use crate::store::{ReleaseRow, ReleaseSource};

/// The upload route: its body is streamed to disk by the handler, not read up front.
pub const UPLOAD_PATH: &str = "/api/v1/releases";

/// A release as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    pub id: i64,
    pub app: String,
    /// Release number: grows with every release of the app.
    pub release: u64,
    pub version: String,
    /// SHA-256 (hex) and size of the canonical archive devices download.
    pub archive_sha256: String,
    pub archive_size: u64,
    pub unpacked_size: u64,
    pub entries: u64,
    pub arches: Vec<String>,
    pub hooks: Vec<String>,
    pub start_timeout_s: u32,
    pub soak_s: u32,
    /// The release key that signed the manifest (key id, hex).
    pub key_id: String,
    pub manifest_sha256: String,
    /// `upload` or `git`.
    pub source: String,
    /// The uploaded file's name, or the git URL (credentials removed).
    #[schema(required)]
    pub source_name: Option<String>,
    /// The git commit.
    #[schema(required)]
    pub source_rev: Option<String>,
    pub created_at: i64,
    pub created_by: String,
}

impl From<ReleaseRow> for ReleaseView {
    fn from(r: ReleaseRow) -> Self {
        let (source, source_name, source_rev) = match r.source {
            ReleaseSource::Upload { file_name } => ("upload".to_owned(), file_name, None),
            ReleaseSource::Git { url, rev } => ("git".to_owned(), Some(url), Some(rev)),
        };
        Self {
            id: r.id,
            app: r.app,
            release: r.release,
            version: r.version,
            archive_sha256: r.archive_sha256,
            archive_size: r.archive_size,
            unpacked_size: r.unpacked_size,
            entries: r.entries,
            arches: r.arches,
            hooks: r.hooks,
            start_timeout_s: r.health.start_timeout_s,
            soak_s: r.health.soak_s,
            key_id: r.key_id,
            manifest_sha256: r.manifest_sha256,
            source,
            source_name,
            source_rev,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

/// What a new release is, beside its content (query parameters of an upload).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// The app, as allowlisted on devices.
    pub app: String,
    /// Human version text.
    pub version: String,
    /// Architectures, comma separated (uname -m); none: any.
    pub arches: Option<String>,
    /// Allowlisted hooks to run, comma separated: pre_start, post_switch.
    pub hooks: Option<String>,
    /// Seconds the unit has to become active (default 60).
    pub start_timeout_s: Option<u32>,
    /// Seconds it must then stay active without restarts (default 60).
    pub soak_s: Option<u32>,
    /// A probe `PORT/PATH`: GET http://127.0.0.1:PORT/PATH must answer 2xx.
    pub probe_http: Option<String>,
    /// A probe: the app's allowlisted probe command must exit 0.
    pub probe_command: Option<bool>,
    /// Probe passes in a row (default 3).
    pub probe_passes: Option<u32>,
    /// Seconds between probes (default 5).
    pub probe_interval_s: Option<u32>,
}

/// A release from a git commit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitRelease {
    /// Repository URL (https:// or ssh://).
    pub url: String,
    /// The full commit SHA.
    pub rev: String,
    /// The app, as allowlisted on devices.
    pub app: String,
    /// Human version text.
    pub version: String,
    /// Architectures, comma separated (uname -m); none: any.
    pub arches: Option<String>,
    /// Allowlisted hooks to run, comma separated: pre_start, post_switch.
    pub hooks: Option<String>,
    /// Seconds the unit has to become active (default 60).
    pub start_timeout_s: Option<u32>,
    /// Seconds it must then stay active without restarts (default 60).
    pub soak_s: Option<u32>,
    /// A probe `PORT/PATH`: GET http://127.0.0.1:PORT/PATH must answer 2xx.
    pub probe_http: Option<String>,
    /// A probe: the app's allowlisted probe command must exit 0.
    pub probe_command: Option<bool>,
    /// Probe passes in a row (default 3).
    pub probe_passes: Option<u32>,
    /// Seconds between probes (default 5).
    pub probe_interval_s: Option<u32>,
}

impl GitRelease {
    /// Everything but where the content comes from.
    fn params(self) -> (ReleaseParams, String, String) {
        (
            ReleaseParams {
                app: self.app,
                version: self.version,
                arches: self.arches,
                hooks: self.hooks,
                start_timeout_s: self.start_timeout_s,
                soak_s: self.soak_s,
                probe_http: self.probe_http,
                probe_command: self.probe_command,
                probe_passes: self.probe_passes,
                probe_interval_s: self.probe_interval_s,
            },
            self.url,
            self.rev,
        )
    }
}

fn list_of(s: Option<&str>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

impl ReleaseParams {
    fn new_release(&self, created_by: String) -> Result<NewRelease, Problem> {
        let d = HealthSpec::default();
        let probe = match (&self.probe_http, self.probe_command.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(Problem::bad_request(
                    "give at most one of probe_http and probe_command",
                ));
            }
            (None, true) => Some(Probe::Command),
            (Some(spec), false) => {
                let (port, path) = spec.split_once('/').unwrap_or((spec, ""));
                let port = port.parse::<u16>().map_err(|_| {
                    Problem::bad_request("probe_http is PORT/PATH, e.g. 8080/healthz")
                })?;
                Some(Probe::Http {
                    port,
                    path: format!("/{path}"),
                })
            }
            (None, false) => None,
        };
        Ok(NewRelease {
            app: self.app.clone(),
            version: self.version.clone(),
            arches: list_of(self.arches.as_deref()),
            hooks: list_of(self.hooks.as_deref()),
            health: HealthSpec {
                start_timeout_s: self.start_timeout_s.unwrap_or(d.start_timeout_s),
                soak_s: self.soak_s.unwrap_or(d.soak_s),
                probe,
                probe_passes: self.probe_passes.unwrap_or(d.probe_passes),
                probe_interval_s: self.probe_interval_s.unwrap_or(d.probe_interval_s),
            },
            created_by,
        })
    }
}

/// Runs the creation in a task of its own, so a client that goes away does not cancel a
/// repack halfway (nothing would be left behind, but the work would be lost).
async fn create(st: &AppState, new: NewRelease, input: Input) -> Result<ReleaseRow, Problem> {
    let signer = crate::setup::release_signer(&st.dd).map_err(|e| {
        Problem::conflict(format!(
            "{e}: this controller cannot sign releases; use `pifleet-controller release create --key FILE`"
        ))
    })?;
    let (dd, store) = (st.dd.clone(), st.store.clone());
    let opts = IntakeOptions::from(&st.cfg.releases);
    tokio::spawn(
        async move { releases::create_release(&dd, &store, &signer, &opts, new, input).await },
    )
    .await
    .map_err(|e| Problem::internal(&e))?
    .map_err(Problem::from)
}

/// Uploads an archive (.zip, .tar.gz or .tar) as the request body and makes a release of
/// it. The body is streamed to disk; `releases.max_upload_mib` bounds it.
#[utoipa::path(post, operation_id = "upload_release", path = "/api/v1/releases", tag = "releases",
    params(ReleaseParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The archive"),
    responses((status = 201, description = "The release", body = ReleaseView),
        (status = "4XX", description = "Invalid parameters, an archive with a refused entry or too large (413), the same archive already released (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn upload(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<ReleaseParams>,
    body: Body,
) -> Result<axum::response::Response, Problem> {
    let new = q.new_release(p.actor())?;
    let max = st.cfg.releases.max_upload_mib.saturating_mul(1024 * 1024);
    let dir = st.dd.releases_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(&dir)
        .map_err(|e| Problem::internal(&e))?
        .into_temp_path();
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Problem::bad_request("the upload could not be read"))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > max {
            return Err(ReleaseError::Intake(IntakeError::UploadTooLarge { size, max }).into());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| Problem::internal(&e))?;
    }
    file.flush().await.map_err(|e| Problem::internal(&e))?;
    drop(file);
    let row = create(
        &st,
        new,
        Input::Upload {
            path: tmp.to_path_buf(),
            file_name: None,
        },
    )
    .await?;
    drop(tmp);
    let note = format!(
        "{}#{} id={} archive={}",
        row.app, row.release, row.id, row.archive_sha256
    );
    Ok(noted(
        note,
        (StatusCode::CREATED, axum::Json(ReleaseView::from(row))),
    ))
}

/// Makes a release from a git commit: the controller fetches it with the system git (never
/// in place, hooks off) and packs it; devices need no git credentials.
#[utoipa::path(post, operation_id = "git_release", path = "/api/v1/releases/git", tag = "releases",
    request_body = GitRelease,
    responses((status = 201, description = "The release", body = ReleaseView),
        (status = "4XX", description = "Invalid parameters, URL or revision, a refused entry, the same archive already released (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn from_git(
    State(st): State<AppState>,
    p: Principal,
    Json(req): Json<GitRelease>,
) -> Result<axum::response::Response, Problem> {
    let (params, url, rev) = req.params();
    let new = params.new_release(p.actor())?;
    let row = create(&st, new, Input::Git { url, rev }).await?;
    let note = format!(
        "{}#{} id={} archive={}",
        row.app, row.release, row.id, row.archive_sha256
    );
    Ok(noted(
        note,
        (StatusCode::CREATED, axum::Json(ReleaseView::from(row))),
    ))
}

/// The release list's filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    /// Only this app's releases.
    pub app: Option<String>,
}

/// A release id in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ReleasePath {
    pub id: i64,
}

/// Lists releases, newest first.
#[utoipa::path(get, operation_id = "list_releases", path = "/api/v1/releases", tag = "releases",
    params(ReleaseQuery),
    responses((status = 200, description = "Releases", body = Vec<ReleaseView>), Refused))]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<ReleaseQuery>,
) -> Result<axum::Json<Vec<ReleaseView>>, Problem> {
    let rows = releases::list(&st.store, q.app.as_deref()).await?;
    Ok(axum::Json(
        rows.into_iter().map(ReleaseView::from).collect(),
    ))
}

/// One release.
#[utoipa::path(get, operation_id = "show_release", path = "/api/v1/releases/{id}", tag = "releases",
    params(ReleasePath),
    responses((status = 200, description = "The release", body = ReleaseView),
        (status = "4XX", description = "No such release, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn show(
    State(st): State<AppState>,
    Path(ReleasePath { id }): Path<ReleasePath>,
) -> Result<axum::Json<ReleaseView>, Problem> {
    Ok(axum::Json(releases::show(&st.store, id).await?.into()))
}

/// Deletes a release (refused while a rollout uses it).
#[utoipa::path(delete, operation_id = "delete_release", path = "/api/v1/releases/{id}", tag = "releases",
    params(ReleasePath),
    responses((status = 204, description = "Deleted"),
        (status = "4XX", description = "No such release (404), used by a rollout (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn delete(
    State(st): State<AppState>,
    Path(ReleasePath { id }): Path<ReleasePath>,
) -> Result<axum::response::Response, Problem> {
    let row = releases::delete_release(&st.dd, &st.store, id).await?;
    Ok(noted(
        format!("{}#{}", row.app, row.release),
        StatusCode::NO_CONTENT,
    ))
}
