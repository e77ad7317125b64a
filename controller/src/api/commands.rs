//! Signed remote commands: send (to devices by id or by label selector), list, show and
//! cancel. Sending goes through the dispatcher, the same code as the CLI; the action names
//! and bounds are checked there by `Action::validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use pifleet_shared::command::{
    Action, CommandId, MAX_JOURNAL_LINES, MAX_NAME_LEN, MAX_SCRIPT_ARGS, ServiceOp,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::api::AppState;
use crate::api::devices::{bounded, device_id, labels_from_map};
use crate::api::extract::{Json, Path, Query, noted};
use crate::dispatch::{DispatchError, Targets};
use crate::lifecycle::Status;
use crate::problem::{Problem, ProblemDoc};
use crate::store::{Cancel, CommandRow};

/// Most devices one request may name.
pub const MAX_DEVICES: usize = 1_000;
/// Journal lines when none are asked for.
const DEFAULT_JOURNAL_LINES: u32 = 100;

/// What to do with a systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceOpSpec {
    Status,
    Start,
    Stop,
    Restart,
}

/// What a device is asked to do. Units and scripts must also be on the device's own
/// allowlist, which the device checks. The OpenAPI schema is written by hand below, so
/// that each variant refuses unknown fields as the deserializer does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    // Ping and Reboot are empty struct variants, not unit variants, so that unknown fields
    // are refused for them too.
    /// Answers at once; proves the path works.
    Ping {},
    /// Reboots after the result is sent.
    Reboot {},
    /// status / start / stop / restart of a systemd unit.
    Service { op: ServiceOpSpec, unit: String },
    /// The last `lines` journal lines of a unit (1–1000, default 100).
    Journal {
        unit: String,
        #[serde(default = "default_journal_lines")]
        lines: u32,
    },
    /// A script by name, with arguments from its declared set.
    Script {
        name: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// Changes the telemetry interval (bounded by the agent's configuration).
    SetInterval { seconds: u32 },
}

fn default_journal_lines() -> u32 {
    DEFAULT_JOURNAL_LINES
}

impl PartialSchema for ActionSpec {
    fn schema() -> RefOr<Schema> {
        let variant = |kind: &str, description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property(
                    "kind",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([kind])),
                )
                .required("kind")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let name = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_NAME_LEN))
                .description(Some("1-128 of A-Z a-z 0-9 @ . _ : + -"))
        };
        let int = |min: u32, max: u32| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(min))
                .maximum(Some(max))
        };
        OneOfBuilder::new()
            .description(Some(
                "What a device is asked to do, by `kind`. Units and scripts must also be on \
                 the device's own allowlist.",
            ))
            .item(variant("ping", "Answers at once; proves the path works."))
            .item(variant("reboot", "Reboots after the result is sent."))
            .item(
                variant(
                    "service",
                    "status / start / stop / restart of a systemd unit.",
                )
                .property("op", ServiceOpSpec::schema())
                .required("op")
                .property("unit", name())
                .required("unit"),
            )
            .item(
                variant("journal", "The last `lines` journal lines of a unit.")
                    .property("unit", name())
                    .required("unit")
                    .property(
                        "lines",
                        int(1, MAX_JOURNAL_LINES).default(Some(DEFAULT_JOURNAL_LINES.into())),
                    ),
            )
            .item(
                variant(
                    "script",
                    "A script by name, with arguments from its declared set.",
                )
                .property("name", name())
                .required("name")
                .property(
                    "args",
                    ArrayBuilder::new()
                        .items(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .min_length(Some(1))
                                .max_length(Some(MAX_NAME_LEN)),
                        )
                        .max_items(Some(MAX_SCRIPT_ARGS))
                        .default(Some(serde_json::Value::Array(Vec::new()))),
                ),
            )
            .item(
                variant(
                    "set_interval",
                    "Changes the telemetry interval (bounded by the agent's configuration).",
                )
                .property("seconds", int(1, u32::MAX))
                .required("seconds"),
            )
            .into()
    }
}

impl ToSchema for ActionSpec {}

impl From<ServiceOpSpec> for ServiceOp {
    fn from(op: ServiceOpSpec) -> Self {
        match op {
            ServiceOpSpec::Status => ServiceOp::Status,
            ServiceOpSpec::Start => ServiceOp::Start,
            ServiceOpSpec::Stop => ServiceOp::Stop,
            ServiceOpSpec::Restart => ServiceOp::Restart,
        }
    }
}

impl From<ServiceOp> for ServiceOpSpec {
    fn from(op: ServiceOp) -> Self {
        match op {
            ServiceOp::Status => ServiceOpSpec::Status,
            ServiceOp::Start => ServiceOpSpec::Start,
            ServiceOp::Stop => ServiceOpSpec::Stop,
            ServiceOp::Restart => ServiceOpSpec::Restart,
        }
    }
}

impl From<ActionSpec> for Action {
    fn from(a: ActionSpec) -> Self {
        match a {
            ActionSpec::Ping {} => Action::Ping,
            ActionSpec::Reboot {} => Action::Reboot,
            ActionSpec::Service { op, unit } => Action::Service {
                unit,
                op: op.into(),
            },
            ActionSpec::Journal { unit, lines } => Action::JournalTail { unit, lines },
            ActionSpec::Script { name, args } => Action::RunScript { name, args },
            ActionSpec::SetInterval { seconds } => Action::SetInterval { seconds },
        }
    }
}

impl From<Action> for ActionSpec {
    fn from(a: Action) -> Self {
        match a {
            Action::Ping => ActionSpec::Ping {},
            Action::Reboot => ActionSpec::Reboot {},
            Action::Service { unit, op } => ActionSpec::Service {
                op: op.into(),
                unit,
            },
            Action::JournalTail { unit, lines } => ActionSpec::Journal { unit, lines },
            Action::RunScript { name, args } => ActionSpec::Script { name, args },
            Action::SetInterval { seconds } => ActionSpec::SetInterval { seconds },
        }
    }
}

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

/// The commands created, one per target device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SentCommands {
    pub commands: Vec<CreatedCommand>,
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
    /// Only commands of this kind: ping, service, reboot, journal, script or set_interval.
    pub action: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Commands to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// A command without its output (the output lengths are here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandSummary {
    pub id: String,
    pub device: String,
    pub action: ActionSpec,
    /// queued, sent, accepted, running, succeeded, failed, rejected, expired or cancelled
    /// (the schema lists them: `status_schema`).
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// Why it failed, was rejected, expired or was cancelled.
    #[schema(required)]
    pub reason: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// First delivery to the device.
    #[schema(required)]
    pub sent_at: Option<i64>,
    #[schema(required)]
    pub accepted_at: Option<i64>,
    #[schema(required)]
    pub started_at: Option<i64>,
    #[schema(required)]
    pub finished_at: Option<i64>,
    #[schema(required)]
    pub exit_code: Option<i64>,
    #[schema(required)]
    pub duration_ms: Option<i64>,
    /// Bytes of standard output the command produced (the stored text may be capped).
    #[schema(required)]
    pub stdout_len: Option<i64>,
    #[schema(required)]
    pub stderr_len: Option<i64>,
}

/// The values of [`CommandSummary::status`]: the names of the lifecycle's states.
fn status_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Status::ALL.map(Status::as_str)))
        .description(Some("Where the command is in its lifecycle."))
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
    /// The targets: exactly one of a list of valid, distinct device ids and a selector.
    fn targets(&self) -> Result<Targets, Problem> {
        match (&self.devices, &self.selector) {
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
                Ok(Targets::Selector(labels_from_map(sel)?))
            }
            _ => Err(Problem::bad_request(
                "give exactly one of devices and selector",
            )),
        }
    }
}

/// What `Action::kind` names: the `action` filter of the command list.
const ACTION_KINDS: [&str; 6] = [
    "ping",
    "service",
    "reboot",
    "journal",
    "script",
    "set_interval",
];

fn dispatch_problem(e: DispatchError) -> Problem {
    match e {
        DispatchError::Action(m) => Problem::bad_request(m),
        DispatchError::Ttl => Problem::bad_request("ttl_s must be between 1 and 604800 seconds"),
        DispatchError::NoTarget(m) => Problem::not_found(m),
        DispatchError::Store(e) => Problem::internal(&e),
    }
}

fn command_id(id: &str) -> Result<String, Problem> {
    CommandId::parse(id)
        .map(|c| c.to_string())
        .ok_or_else(|| Problem::bad_request("a command id is 32 lowercase hex digits"))
}

/// A command row as the API lists it.
pub(crate) fn command_summary(c: &CommandRow) -> Result<CommandSummary, Problem> {
    let action = c.parsed_action().map_err(|e| Problem::internal(&e))?;
    Ok(CommandSummary {
        id: c.id.clone(),
        device: c.device_id.clone(),
        action: action.into(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        created_at: c.created_at,
        expires_at: c.expires_at,
        sent_at: c.sent_at,
        accepted_at: c.accepted_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        duration_ms: c.duration_ms,
        stdout_len: c.stdout_len,
        stderr_len: c.stderr_len,
    })
}

/// Sends a command to devices; it waits (until its TTL) for devices that are offline.
#[utoipa::path(
    post,
    operation_id = "send_command",
    path = "/api/v1/commands",
    tag = "commands",
    request_body = SendCommand,
    responses(
        (status = 202, description = "Commands created, one per device", body = SentCommands),
        (status = "4XX", description = "Invalid request, unknown or revoked device, no device matches, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn send(
    State(st): State<AppState>,
    Json(req): Json<SendCommand>,
) -> Result<Response, Problem> {
    let targets = req.targets()?;
    let ttl = Duration::from_secs(req.ttl_s.unwrap_or(st.cfg.commands.default_ttl_s));
    let action = Action::from(req.action);
    let kind = action.kind();
    let created = st
        .dispatcher
        .submit(&targets, action, ttl)
        .await
        .map_err(dispatch_problem)?;
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
        (StatusCode::ACCEPTED, axum::Json(SentCommands { commands })),
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
        (status = "4XX", description = "Invalid query or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
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
    let items = rows.iter().map(command_summary).collect::<Result<_, _>>()?;
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
        summary: command_summary(&row)?,
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

    fn spec(json: &str) -> Result<ActionSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn actions_convert_both_ways() {
        let cases = [
            (r#"{"kind":"ping"}"#, Action::Ping),
            (r#"{"kind":"reboot"}"#, Action::Reboot),
            (
                r#"{"kind":"service","op":"restart","unit":"nginx.service"}"#,
                Action::Service {
                    unit: "nginx.service".into(),
                    op: ServiceOp::Restart,
                },
            ),
            (
                r#"{"kind":"journal","unit":"kiosk","lines":20}"#,
                Action::JournalTail {
                    unit: "kiosk".into(),
                    lines: 20,
                },
            ),
            (
                r#"{"kind":"journal","unit":"kiosk"}"#,
                Action::JournalTail {
                    unit: "kiosk".into(),
                    lines: 100,
                },
            ),
            (
                r#"{"kind":"script","name":"backup","args":["full"]}"#,
                Action::RunScript {
                    name: "backup".into(),
                    args: vec!["full".into()],
                },
            ),
            (
                r#"{"kind":"script","name":"backup"}"#,
                Action::RunScript {
                    name: "backup".into(),
                    args: vec![],
                },
            ),
            (
                r#"{"kind":"set_interval","seconds":30}"#,
                Action::SetInterval { seconds: 30 },
            ),
        ];
        for (json, want) in cases {
            let s = spec(json).unwrap();
            assert_eq!(Action::from(s.clone()), want, "{json}");
            assert_eq!(ActionSpec::from(want), s, "{json}");
        }
        for bad in [
            r#"{"kind":"shell","cmd":"rm -rf /"}"#,
            r#"{"kind":"ping","extra":1}"#,
            r#"{"kind":"service","op":"Restart","unit":"x"}"#,
            r#"{"kind":"service","unit":"x"}"#,
            r#"{"kind":"service","op":"start","unit":"x","extra":1}"#,
            r#"{"kind":"reboot","now":true}"#,
            r#"{"kind":"set_interval","seconds":-1}"#,
            r#"{"op":"start"}"#,
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }
    }

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
