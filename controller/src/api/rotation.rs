//! `GET /api/v1/rotation`: the command and release keys in use and the devices that have
//! not confirmed them yet (what `rotate status` prints), for an administrator watching a
//! rotation's overlap.

use axum::extract::State;
use pifleet_shared::signing::TrustedKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::problem::{Problem, Refused};
use crate::store::now_ms;

/// One command key of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandKeyView {
    /// 16 hex digits.
    pub key_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// `signing` (the newest), `overlap` (superseded, still signing for devices that have
    /// not confirmed the newest) or `retired`.
    pub state: String,
    /// When a superseded key stops signing, Unix ms.
    #[schema(required)]
    pub signs_until: Option<i64>,
}

/// Keys in use and who has not confirmed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotationStatus {
    /// The command key history, newest first.
    pub command_keys: Vec<CommandKeyView>,
    /// Devices that have not confirmed the newest command key (none before any rotation).
    pub command_key_pending: Vec<String>,
    /// The release key ids devices are told to trust.
    pub release_keys: Vec<String>,
    /// Devices that have not confirmed every release key and are not being told.
    pub release_key_pending: Vec<String>,
}

/// The keys in use and the devices that have not confirmed them.
#[utoipa::path(
    get,
    operation_id = "rotation_status",
    path = "/api/v1/rotation",
    tag = "system",
    responses(
        (status = 200, description = "Keys and pending devices", body = RotationStatus),
        Refused,
    )
)]
pub async fn status(State(st): State<AppState>) -> Result<axum::Json<RotationStatus>, Problem> {
    let history = st.store.command_keys().await?;
    let command_key_pending = match history.last() {
        Some(newest) if history.len() > 1 => {
            st.store
                .devices_without_command_key(&newest.key_id, newest.announce_from)
                .await?
        }
        _ => Vec::new(),
    };
    let now = now_ms();
    let newest = history.len().saturating_sub(1);
    let command_keys = history
        .iter()
        .enumerate()
        .rev()
        .map(|(i, k)| {
            let live = k.retire_at.filter(|t| *t > now);
            let state = match (i == newest, live) {
                (true, _) => "signing",
                (false, Some(_)) => "overlap",
                (false, None) => "retired",
            };
            CommandKeyView {
                key_id: k.key_id.clone(),
                created_at: k.created_at,
                state: state.to_owned(),
                signs_until: if i == newest { None } else { k.retire_at },
            }
        })
        .collect();
    let release_keys: Vec<String> = st
        .enroll
        .pinned
        .load()
        .release_public_keys
        .iter()
        .filter_map(|pem| TrustedKey::from_pem(pem).ok())
        .map(|k| k.id.to_string())
        .collect();
    let release_key_pending = st.store.devices_to_announce(&release_keys).await?;
    Ok(axum::Json(RotationStatus {
        command_keys,
        command_key_pending,
        release_keys,
        release_key_pending,
    }))
}
