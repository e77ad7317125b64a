//! How a command looks to the admin API and the dashboard: its action in the API's JSON
//! shape (documented in the OpenAPI document), its status, and its summary without output.

use pifleet_shared::command::{
    Action, MAX_JOURNAL_LINES, MAX_NAME_LEN, MAX_SCRIPT_ARGS, ServiceOp,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::model::action_view::ActionView;

/// Where a command is in its lifecycle (the transitions are in `model::lifecycle`).
/// Serialized as the lowercase name, [`Status::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sent,
    Accepted,
    Running,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Queued,
        Status::Sent,
        Status::Accepted,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Rejected,
        Status::Expired,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Rejected | Self::Expired | Self::Cancelled
        )
    }
}

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

/// What an operator asks a device to do (command listings show any action as
/// [`ActionView`]). Units and scripts must also be on the device's own allowlist, which
/// the device checks. The OpenAPI schema is written by hand below, so
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

/// A command without its output (the output lengths are here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandSummary {
    pub id: String,
    pub device: String,
    pub action: ActionView,
    /// queued, sent, accepted, running, succeeded, failed, rejected, expired or cancelled
    /// (the schema lists them: `status_schema`).
    #[schema(schema_with = status_schema)]
    pub status: Status,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A status is serialized as its name, and read back from it.
    #[test]
    fn statuses_serialize_as_their_names() {
        for s in Status::ALL {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, serde_json::Value::from(s.as_str()));
            assert_eq!(serde_json::from_value::<Status>(json).unwrap(), s);
        }
        assert!(serde_json::from_str::<Status>(r#""Queued""#).is_err());
    }

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
            assert_eq!(ActionView::from(want), ActionView::Command(s), "{json}");
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
}
