//! Signed remote commands: send (to devices by id or by label selector), list, show and
//! cancel. Sending goes through the dispatcher, the same code as the CLI; the action names
//! and bounds are checked there by `Action::validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use pifleet_shared::command::{Action, CommandId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{Json, Path, Principal, Query, noted};
use crate::api::params::{bounded, device_id};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::approvals::{self, CommandRequest, Policy};
use crate::commands::dispatch::{Targets, resolve_targets};
use crate::model::approvals::ApprovalView;
use crate::model::commands::Status;
use crate::model::commands::{ActionSpec, CommandSummary};
use crate::model::labels;
use crate::store::Cancel;

/// Most devices one request may name.
pub const MAX_DEVICES: usize = 1_000;
/// A command for some devices: give exactly one of `devices` and `selector`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCommand {
    /// Device ids (1–1000).
    pub devices: Option<Vec<String>>,
    /// Every unrevoked device whose labels include all of these.
    pub selector: Option<BTreeMap<String, String>>,
    pub action: ActionSpec,
    /// Seconds the command may wait for an offline device (1–604800; default from the
    /// configuration, `commands.default_ttl_s`).
    pub ttl_s: Option<u64>,
}

/// A created command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedCommand {
    /// 32 lowercase hex.
    pub id: String,
    pub device: String,
}

/// The commands created, one per target device; or, when the request needs a second
/// admin's approval, no commands and the approval request that waits for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SentCommands {
    pub commands: Vec<CreatedCommand>,
    /// Set when nothing was sent yet: the request waits for approval.
    #[schema(required)]
    pub approval: Option<ApprovalView>,
}

/// Filters and page of the command list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandQuery {
    /// Only this device's commands.
    pub device: Option<String>,
    /// Only commands in this state: queued, sent, accepted, running, succeeded, failed,
    /// rejected, expired or cancelled.
    pub status: Option<String>,
    /// Only commands of this kind: ping, service, reboot, journal, script, set_interval,
    /// deploy, rollback, trust_release_keys or trust_command_keys (the last four are
    /// created by the controller, never sent through this API).
    pub action: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Commands to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// One page of commands, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandPage {
    /// Commands matching the filters, over all pages.
    pub total: i64,
    pub items: Vec<CommandSummary>,
}

/// A command in full, with its output and the device's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandDetail {
    #[serde(flatten)]
    pub summary: CommandSummary,
    /// When it was last signed and sent.
    #[schema(required)]
    pub issued_at: Option<i64>,
    /// Captured standard output (capped by the agent), as text.
    #[schema(required)]
    pub stdout: Option<String>,
    /// SHA-256 (hex) of everything the command wrote to standard output.
    #[schema(required)]
    pub stdout_sha256: Option<String>,
    #[schema(required)]
    pub stderr: Option<String>,
    #[schema(required)]
    pub stderr_sha256: Option<String>,
}

/// The result of a cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    pub id: String,
    /// Always `cancelled`.
    pub status: String,
}

impl SendCommand {
    fn targets(&self) -> Result<Targets, Problem> {
        targets(self.devices.as_deref(), self.selector.as_ref())
    }
}

/// The targets of a request: exactly one of a list of valid, distinct device ids (1 to
/// [`MAX_DEVICES`]) and a selector naming at least one label.
pub fn targets(
    devices: Option<&[String]>,
    selector: Option<&BTreeMap<String, String>>,
) -> Result<Targets, Problem> {
    match (devices, selector) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_DEVICES {
                return Err(Problem::bad_request(format!(
                    "devices must list 1 to {MAX_DEVICES} device ids"
                )));
            }
            let mut out: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                let id = device_id(id)?;
                if !out.iter().any(|o| o == id.as_str()) {
                    out.push(id.as_str().to_owned());
                }
            }
            Ok(Targets::Devices(out))
        }
        (None, Some(sel)) => {
            if sel.is_empty() {
                return Err(Problem::bad_request(
                    "selector must name at least one label",
                ));
            }
            Ok(Targets::Selector(labels::from_map(sel)?))
        }
        _ => Err(Problem::bad_request(
            "give exactly one of devices and selector",
        )),
    }
}

/// What `Action::kind` names: the `action` filter of the command list.
const ACTION_KINDS: [&str; 10] = [
    "ping",
    "service",
    "reboot",
    "journal",
    "script",
    "set_interval",
    "deploy",
    "rollback",
    "trust_release_keys",
    "trust_command_keys",
];

fn command_id(id: &str) -> Result<String, Problem> {
    CommandId::parse(id)
        .map(|c| c.to_string())
        .ok_or_else(|| Problem::bad_request("a command id is 32 lowercase hex digits"))
}

/// Sends a command to devices; it waits (until its TTL) for devices that are offline.
#[utoipa::path(
    post,
    operation_id = "send_command",
    path = "/api/v1/commands",
    tag = "commands",
    request_body = SendCommand,
    responses(
        (status = 202, description = "Commands created, one per device; or, for more devices than approvals.device_threshold or the whole fleet, an approval request and no commands", body = SentCommands),
        (status = "4XX", description = "Invalid request, unknown or revoked device, no device matches, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn send(
    State(st): State<AppState>,
    p: Principal,
    Json(req): Json<SendCommand>,
) -> Result<Response, Problem> {
    let targets = req.targets()?;
    let ttl_s = req.ttl_s.unwrap_or(st.cfg.commands.default_ttl_s);
    let ttl = Duration::from_secs(ttl_s);
    let policy = Policy::from(&st.cfg.approvals);
    let resolved = resolve_targets(&st.store, &targets).await?;
    if policy.needs_approval(&resolved) {
        // Checked before it waits, so a request that could never be sent is refused now.
        Action::from(req.action.clone())
            .validate()
            .map_err(|e| Problem::bad_request(format!("invalid action: {e}")))?;
        if !(1..=7 * 86_400).contains(&ttl_s) {
            return Err(Problem::bad_request(
                "ttl_s must be between 1 and 604800 seconds",
            ));
        }
        let request = CommandRequest {
            targets,
            action: req.action,
            ttl_s,
        };
        let row = approvals::request_command(
            &st.store,
            &policy,
            &p.actor(),
            Some(p.user_id),
            &request,
            &resolved,
        )
        .await?;
        let note = format!("awaiting approval {}: {}", row.id, row.summary);
        let body = SentCommands {
            commands: Vec::new(),
            approval: Some(row.view(crate::store::now_ms())),
        };
        return Ok(noted(note, (StatusCode::ACCEPTED, axum::Json(body))));
    }
    let action = Action::from(req.action);
    let kind = action.kind();
    let created = st.dispatcher.submit(&targets, action, ttl).await?;
    let commands: Vec<CreatedCommand> = created
        .into_iter()
        .map(|(id, device)| CreatedCommand {
            id: id.to_string(),
            device,
        })
        .collect();
    let ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
    let note = format!("action: {kind}; command ids: {}", ids.join(", "));
    Ok(noted(
        note,
        (
            StatusCode::ACCEPTED,
            axum::Json(SentCommands {
                commands,
                approval: None,
            }),
        ),
    ))
}

/// Lists commands, newest first.
#[utoipa::path(
    get,
    operation_id = "list_commands",
    path = "/api/v1/commands",
    tag = "commands",
    params(CommandQuery),
    responses(
        (status = 200, description = "One page of commands", body = CommandPage),
        Refused,
    )
)]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<CommandQuery>,
) -> Result<axum::Json<CommandPage>, Problem> {
    let device = q.device.as_deref().map(device_id).transpose()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            Problem::bad_request(format!("status must be one of {}", all.join(", ")))
        })?),
    };
    let action = match q.action.as_deref() {
        None => None,
        Some(a) if ACTION_KINDS.contains(&a) => Some(a),
        Some(_) => {
            return Err(Problem::bad_request(format!(
                "action must be one of {}",
                ACTION_KINDS.join(", ")
            )));
        }
    };
    let limit = bounded("limit", q.limit, 50, 1, 500)?;
    let offset = bounded("offset", q.offset, 0, 0, i64::MAX)?;
    let (total, rows) = st
        .store
        .command_page(
            device.as_ref().map(|d| d.as_str()),
            status,
            action,
            limit,
            offset,
        )
        .await?;
    let items = rows
        .iter()
        .map(CommandSummary::try_from)
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(CommandPage { total, items }))
}

/// One command in full, with its output.
#[utoipa::path(
    get,
    operation_id = "show_command",
    path = "/api/v1/commands/{id}",
    tag = "commands",
    params(("id" = String, Path, description = "Command id, 32 lowercase hex digits", pattern = r"^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "The command", body = CommandDetail),
        (status = "4XX", description = "Invalid id, unknown command or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<CommandDetail>, Problem> {
    let id = command_id(&id)?;
    let row = st
        .store
        .command(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no command {id}")))?;
    Ok(axum::Json(CommandDetail {
        summary: CommandSummary::try_from(&row)?,
        issued_at: row.issued_at,
        stdout: row.stdout,
        stdout_sha256: row.stdout_sha256,
        stderr: row.stderr,
        stderr_sha256: row.stderr_sha256,
    }))
}

/// Cancels a command that has not been sent yet.
#[utoipa::path(
    post,
    operation_id = "cancel_command",
    path = "/api/v1/commands/{id}/cancel",
    tag = "commands",
    params(("id" = String, Path, description = "Command id, 32 lowercase hex digits", pattern = r"^[0-9a-f]{32}$")),
    responses(
        (status = 200, description = "Cancelled", body = Cancelled),
        (status = "4XX", description = "Invalid id, unknown command, already past the queue, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Cancelled>, Problem> {
    let id = command_id(&id)?;
    match st.store.cancel_command(&id).await? {
        Cancel::Unknown => Err(Problem::not_found(format!("no command {id}"))),
        Cancel::Cancelled => {
            if let Some(row) = st.store.command(&id).await? {
                st.live.command_changed(&row.device_id, &id);
            }
            Ok(axum::Json(Cancelled {
                id,
                status: Status::Cancelled.as_str().to_owned(),
            }))
        }
        Cancel::Refused(Status::Cancelled) => Err(Problem::conflict(format!(
            "command {id} is already cancelled"
        ))),
        Cancel::Refused(other) => Err(Problem::conflict(format!(
            "command {id} is {}: only a queued command can be cancelled; one already sent \
             to the device stops only at its expiry",
            other.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(json: &str) -> SendCommand {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn targets() {
        let t = send(r#"{"devices":["pi-1","pi-2","pi-1"],"action":{"kind":"ping"}}"#)
            .targets()
            .unwrap();
        assert!(matches!(t, Targets::Devices(ids) if ids == ["pi-1", "pi-2"]));
        let t = send(r#"{"selector":{"site":"lobby"},"action":{"kind":"ping"}}"#)
            .targets()
            .unwrap();
        assert!(matches!(t, Targets::Selector(l) if l.len() == 1));
        for bad in [
            r#"{"action":{"kind":"ping"}}"#,
            r#"{"devices":[],"action":{"kind":"ping"}}"#,
            r#"{"devices":["Pi 1"],"action":{"kind":"ping"}}"#,
            r#"{"selector":{},"action":{"kind":"ping"}}"#,
            r#"{"selector":{"Bad":"x"},"action":{"kind":"ping"}}"#,
            r#"{"devices":["pi-1"],"selector":{"a":"b"},"action":{"kind":"ping"}}"#,
        ] {
            assert_eq!(
                send(bad).targets().unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let many: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("pi-{i}")).collect();
        let req = SendCommand {
            devices: Some(many),
            selector: None,
            action: ActionSpec::Ping {},
            ttl_s: None,
        };
        assert!(req.targets().is_err());
        assert!(
            serde_json::from_str::<SendCommand>(r#"{"action":{"kind":"ping"},"x":1}"#).is_err()
        );
    }

    #[test]
    fn command_ids() {
        assert!(command_id(&"ab".repeat(16)).is_ok());
        let bad = [
            "".into(),
            "AB".repeat(16),
            "ab".into(),
            "ab".repeat(17),
            "zz".repeat(16),
        ];
        for b in bad {
            assert!(command_id(&b).is_err(), "{b}");
        }
    }
}
