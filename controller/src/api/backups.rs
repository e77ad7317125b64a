//! Backups of the controller through the API (admin only): list, create, download, delete.
//!
//! Only backups encrypted to an age recipient are ever served: a plain backup holds the CA
//! and command keys in the clear, and a stolen admin session must not carry those off. So
//! `create` needs `[backup] recipient` (409 without it), and list, download and delete see
//! encrypted backups only, named exactly as the list names them. Every call is audited,
//! reads too. One backup is written at a time: a `create` while one is running (scheduled
//! or asked for) is 409.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::device_releases::file_body;
use crate::api::extract::{ClientIp, Path, Principal, noted};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::api::{AppState, event};
use crate::backup::{BackupError, manage};

/// The header carrying the SHA-256 (hex) of a downloaded backup, as its `.sha256` file has it.
pub const SHA256_HEADER: &str = "x-backup-sha256";

/// One backup file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupView {
    /// The file name: the name to download or delete it by.
    pub name: String,
    /// When it was made, UTC, as in its name (`20261206T020000Z`).
    pub created_at: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file (hex), from the checksum written beside it; null when that is
    /// missing (such a backup cannot be downloaded).
    #[schema(required)]
    pub sha256: Option<String>,
    /// A `backup verify` found this very file sound.
    pub verified: bool,
}

impl From<manage::Offered> for BackupView {
    fn from(b: manage::Offered) -> Self {
        Self {
            name: b.name,
            created_at: b.listed.stamp,
            size: b.listed.size,
            sha256: b.sha256,
            verified: b.listed.verified,
        }
    }
}

/// A backup's name in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BackupPath {
    /// A name from the backup list.
    #[param(max_length = 128)]
    pub name: String,
}

impl From<BackupError> for Problem {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store(s) => s.into(),
            other => Problem::internal(&other),
        }
    }
}

fn backup_dir(st: &AppState) -> std::path::PathBuf {
    st.cfg.backup.dir_in(st.dd.root())
}

/// Runs blocking file work off the executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(Problem::from)
}

/// The offered backup of this name, or 404.
async fn found(st: &AppState, name: &str) -> Result<manage::Offered, Problem> {
    let dir = backup_dir(st);
    let wanted = name.to_owned();
    blocking(move || manage::find(&dir, &wanted))
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no encrypted backup named {:?}; names come from GET /api/v1/backups",
                name.chars().take(128).collect::<String>()
            ))
        })
}

/// Lists the encrypted backups, oldest first (plain ones are never shown here).
#[utoipa::path(get, operation_id = "list_backups", path = "/api/v1/backups", tag = "backups",
    responses((status = 200, description = "Encrypted backups, oldest first", body = Vec<BackupView>), Refused))]
pub async fn list(
    State(st): State<AppState>,
    p: Principal,
    ClientIp(ip): ClientIp,
) -> Result<axum::Json<Vec<BackupView>>, Problem> {
    let dir = backup_dir(&st);
    let listed = blocking(move || manage::offered(&dir)).await?;
    st.audit(event(
        &p.actor(),
        ip,
        "backup.list",
        "/api/v1/backups",
        "ok",
    ))
    .await?;
    Ok(axum::Json(
        listed.into_iter().map(BackupView::from).collect(),
    ))
}

/// Writes a backup now, encrypted to `[backup] recipient`, the same way the scheduled
/// backup does (old ones pruned to `backup.keep` after it). Answers when it is written; it
/// runs to the end even if the request is abandoned.
#[utoipa::path(post, operation_id = "create_backup", path = "/api/v1/backups", tag = "backups",
    responses(
        (status = 201, description = "Written", body = BackupView),
        (status = "4XX", description = "No age recipient configured, or a backup is being written now (409); or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn create(State(st): State<AppState>) -> Result<Response, Problem> {
    let Some(recipient) = st.cfg.backup.recipient.clone() else {
        return Err(Problem::conflict(
            "no age recipient is configured: the API makes only encrypted backups, so that a \
             stolen admin session cannot carry off the CA and command keys. Set [backup] \
             recipient = \"age1…\" in config.toml and restart, or run `backup create` on the \
             host",
        )
        .with_code("backup_recipient_missing"));
    };
    let Some(turn) = manage::try_turn() else {
        return Err(
            Problem::conflict("a backup is being written now; try again when it is done")
                .with_code("backup_running"),
        );
    };
    let st2 = st.clone();
    // Its own task: an abandoned request does not cut a backup short.
    let made = tokio::spawn(async move {
        let made = manage::create_and_prune(
            &turn,
            &st2.dd,
            &st2.store,
            &st2.cfg.backup,
            Some(&recipient),
            &st2.metrics,
        )
        .await;
        drop(turn);
        made
    })
    .await
    .map_err(|e| Problem::internal(&e))??;
    let name = made
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let view = BackupView {
        created_at: made.metadata.created_at.clone(),
        size: made.size,
        sha256: Some(made.sha256.clone()),
        verified: false,
        name,
    };
    let note = format!(
        "{} ({} bytes, sha256 {}, {} devices, {} samples)",
        view.name, made.size, made.sha256, made.metadata.devices, made.metadata.samples
    );
    Ok(noted(note, (StatusCode::CREATED, axum::Json(view))))
}

/// Downloads an encrypted backup, streamed from disk, with its SHA-256 in
/// `X-Backup-SHA256` (and as the ETag). Restoring it needs the age identity, which is not
/// on this host.
#[utoipa::path(get, operation_id = "download_backup", path = "/api/v1/backups/{name}", tag = "backups",
    params(BackupPath),
    responses(
        (status = 200, description = "The backup file (age-encrypted tar)", body = String, content_type = "application/octet-stream",
            headers(("x-backup-sha256" = String, description = "SHA-256 of the file, hex"))),
        Refused))]
pub async fn download(
    State(st): State<AppState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    Path(path): Path<BackupPath>,
) -> Result<Response, Problem> {
    let target = format!("/api/v1/backups/{}", path.name);
    let served = serve_file(&st, &path.name).await;
    let outcome = match &served {
        Ok(_) => "ok".to_owned(),
        Err(p) if p.status.is_client_error() => format!("refused: {}", p.status.as_u16()),
        Err(p) => format!("error: {}", p.status.as_u16()),
    };
    let mut ev = event(&p.actor(), ip, "backup.download", &target, &outcome);
    if let Ok((_, sha, len)) = &served {
        ev.detail = format!("{len} bytes, sha256 {sha}");
    }
    st.audit(ev).await?;
    served.map(|(r, _, _)| r)
}

/// The response streaming the backup `name`, its SHA-256 and length.
async fn serve_file(st: &AppState, name: &str) -> Result<(Response, String, u64), Problem> {
    let b = found(st, name).await?;
    let Some(sha) = b.sha256.clone() else {
        return Err(Problem::conflict(
            "this backup has no checksum file, so a download could not be checked; run \
             `backup verify` on the host",
        ));
    };
    let path = b.listed.path.clone();
    // The length of the open file: a backup is never rewritten in place.
    let (file, len) = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        Ok::<_, std::io::Error>((f, len))
    })
    .await
    .map_err(|e| Problem::internal(&e))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Problem::not_found("the backup was deleted meanwhile"),
        _ => Problem::internal(&e),
    })?;
    let mut resp = Response::new(file_body(tokio::fs::File::from_std(file), len));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Names are `pifleet-backup-<stamp>.tar.age`: plain ASCII, no quotes.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", b.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        h.insert(SHA256_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::info!(backup = %b.name, bytes = len, "backup download started");
    Ok((resp, sha, len))
}

/// Deletes an encrypted backup with its checksum file.
#[utoipa::path(delete, operation_id = "delete_backup", path = "/api/v1/backups/{name}", tag = "backups",
    params(BackupPath),
    responses((status = 204, description = "Deleted"), Refused))]
pub async fn delete(
    State(st): State<AppState>,
    Path(path): Path<BackupPath>,
) -> Result<Response, Problem> {
    let b = found(&st, &path.name).await?;
    let note = format!("{} ({} bytes)", b.name, b.listed.size);
    blocking(move || manage::delete(&b)).await?;
    Ok(noted(note, StatusCode::NO_CONTENT))
}
