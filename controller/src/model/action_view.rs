//! How command listings show an action: every action a device can be sent. Besides what an
//! operator sends by hand ([`ActionSpec`], the body of `POST /api/v1/commands`), that is
//! what the controller and rollouts create themselves — deploy, rollback and the release
//! and command key announcements — which the generic send endpoint does not accept, so that a release
//! only reaches devices through the code that checks it (release row, digests, rollout).

use pifleet_shared::command::Action;
use pifleet_shared::token::to_hex;
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::model::commands::ActionSpec;

/// An action as listed: one of [`ActionSpec`]'s kinds, or one only the controller creates.
/// Digests and keys are lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionView {
    /// Install release `release` of `app` (created for one device from a release).
    Deploy {
        app: String,
        release: u64,
        manifest_sha256: String,
        archive_sha256: String,
        archive_size: u64,
        retry_failed: bool,
    },
    /// Go back to a release the device keeps.
    Rollback {
        app: String,
        release: u64,
        manifest_sha256: String,
    },
    /// The release keys (Ed25519 public keys) the device is told to trust.
    TrustReleaseKeys { keys: Vec<String> },
    /// The command key history (Ed25519 public keys, oldest first) the device is told to
    /// follow, of which it trusts the last `keep`.
    TrustCommandKeys { keys: Vec<String>, keep: u8 },
    /// An action an operator can send by hand.
    #[serde(untagged)]
    Command(ActionSpec),
}

impl From<Action> for ActionView {
    fn from(a: Action) -> Self {
        match a {
            Action::Ping => Self::Command(ActionSpec::Ping {}),
            Action::Reboot => Self::Command(ActionSpec::Reboot {}),
            Action::Service { unit, op } => Self::Command(ActionSpec::Service {
                op: op.into(),
                unit,
            }),
            Action::JournalTail { unit, lines } => {
                Self::Command(ActionSpec::Journal { unit, lines })
            }
            Action::RunScript { name, args } => Self::Command(ActionSpec::Script { name, args }),
            Action::SetInterval { seconds } => Self::Command(ActionSpec::SetInterval { seconds }),
            Action::Deploy {
                app,
                release,
                manifest_sha256,
                archive_sha256,
                archive_size,
                retry_failed,
            } => Self::Deploy {
                app,
                release,
                manifest_sha256: to_hex(&manifest_sha256),
                archive_sha256: to_hex(&archive_sha256),
                archive_size,
                retry_failed,
            },
            Action::Rollback {
                app,
                release,
                manifest_sha256,
            } => Self::Rollback {
                app,
                release,
                manifest_sha256: to_hex(&manifest_sha256),
            },
            Action::TrustReleaseKeys { keys } => Self::TrustReleaseKeys {
                keys: keys.iter().map(|k| to_hex(k)).collect(),
            },
            Action::TrustCommandKeys { keys, keep, .. } => Self::TrustCommandKeys {
                keys: keys.iter().map(|k| to_hex(k)).collect(),
                keep,
            },
        }
    }
}

/// An action an operator cannot send by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} commands are created by the controller, not sent by hand")]
pub struct ControllerOnly(pub &'static str);

/// The operator's shape of an action, for the kinds an operator sends.
impl TryFrom<Action> for ActionSpec {
    type Error = ControllerOnly;

    fn try_from(a: Action) -> Result<Self, ControllerOnly> {
        let kind = a.kind();
        match ActionView::from(a) {
            ActionView::Command(spec) => Ok(spec),
            _ => Err(ControllerOnly(kind)),
        }
    }
}

impl PartialSchema for ActionView {
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
        let hex = |bytes: usize| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(bytes * 2))
                .max_length(Some(bytes * 2))
                .pattern(Some("^[0-9a-f]+$"))
        };
        let uint = || {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
        };
        let app = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(pifleet_shared::release::MAX_APP_NAME_LEN))
        };
        let mut one_of = OneOfBuilder::new().description(Some(
            "What a device was asked to do, by `kind`: one of the kinds an operator sends \
             (ActionSpec), or deploy, rollback and trust_release_keys, which only the \
             controller creates.",
        ));
        if let RefOr::T(Schema::OneOf(spec)) = ActionSpec::schema() {
            for item in spec.items {
                one_of = one_of.item(item);
            }
        }
        one_of
            .item(
                variant("deploy", "Install a release of an app.")
                    .property("app", app())
                    .required("app")
                    .property("release", uint())
                    .required("release")
                    .property("manifest_sha256", hex(32))
                    .required("manifest_sha256")
                    .property("archive_sha256", hex(32))
                    .required("archive_sha256")
                    .property("archive_size", uint())
                    .required("archive_size")
                    .property(
                        "retry_failed",
                        ObjectBuilder::new().schema_type(Type::Boolean),
                    )
                    .required("retry_failed"),
            )
            .item(
                variant("rollback", "Go back to a release the device keeps.")
                    .property("app", app())
                    .required("app")
                    .property("release", uint())
                    .required("release")
                    .property("manifest_sha256", hex(32))
                    .required("manifest_sha256"),
            )
            .item(
                variant(
                    "trust_release_keys",
                    "The release keys (Ed25519 public keys, hex) the device is to trust.",
                )
                .property(
                    "keys",
                    ArrayBuilder::new()
                        .items(hex(32))
                        .min_items(Some(1))
                        .max_items(Some(pifleet_shared::command::MAX_RELEASE_KEYS)),
                )
                .required("keys"),
            )
            .item(
                variant(
                    "trust_command_keys",
                    "The command key history (Ed25519 public keys, hex, oldest first) the \
                     device is to follow; it trusts the last `keep`.",
                )
                .property(
                    "keys",
                    ArrayBuilder::new()
                        .items(hex(32))
                        .min_items(Some(2))
                        .max_items(Some(pifleet_shared::command::MAX_KEY_LINKS + 1)),
                )
                .required("keys")
                .property(
                    "keep",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(255)),
                )
                .required("keep"),
            )
            .into()
    }
}

impl ToSchema for ActionView {}

#[cfg(test)]
mod tests {
    use super::*;
    use pifleet_shared::command::ServiceOp;

    /// Operator kinds render exactly as `ActionSpec`; the controller's own kinds in hex.
    #[test]
    fn every_action_renders_and_reads_back() {
        let cases = [
            (Action::Ping, r#"{"kind":"ping"}"#.to_owned()),
            (
                Action::Service {
                    unit: "kiosk".into(),
                    op: ServiceOp::Start,
                },
                r#"{"kind":"service","op":"start","unit":"kiosk"}"#.to_owned(),
            ),
            (
                Action::Deploy {
                    app: "web".into(),
                    release: 3,
                    manifest_sha256: [0xab; 32],
                    archive_sha256: [0x01; 32],
                    archive_size: 42,
                    retry_failed: false,
                },
                format!(
                    r#"{{"kind":"deploy","app":"web","release":3,"manifest_sha256":"{}","archive_sha256":"{}","archive_size":42,"retry_failed":false}}"#,
                    "ab".repeat(32),
                    "01".repeat(32)
                ),
            ),
            (
                Action::Rollback {
                    app: "web".into(),
                    release: 2,
                    manifest_sha256: [0xcd; 32],
                },
                format!(
                    r#"{{"kind":"rollback","app":"web","release":2,"manifest_sha256":"{}"}}"#,
                    "cd".repeat(32)
                ),
            ),
            (
                Action::TrustReleaseKeys {
                    keys: vec![[0x11; 32]],
                },
                format!(
                    r#"{{"kind":"trust_release_keys","keys":["{}"]}}"#,
                    "11".repeat(32)
                ),
            ),
        ];
        for (action, json) in cases {
            let view = ActionView::from(action);
            assert_eq!(serde_json::to_string(&view).unwrap(), json);
            assert_eq!(serde_json::from_str::<ActionView>(&json).unwrap(), view);
        }
        assert_eq!(
            ActionSpec::try_from(Action::TrustReleaseKeys { keys: vec![] }),
            Err(ControllerOnly("trust_release_keys"))
        );
        assert_eq!(ActionSpec::try_from(Action::Ping), Ok(ActionSpec::Ping {}));
        // What operators send is not one of the controller's kinds.
        assert!(
            serde_json::from_str::<ActionSpec>(r#"{"kind":"trust_release_keys","keys":[]}"#)
                .is_err()
        );
    }

    #[test]
    fn the_schema_lists_every_kind() {
        let RefOr::T(Schema::OneOf(one_of)) = ActionView::schema() else {
            panic!("not a oneOf");
        };
        assert_eq!(one_of.items.len(), 10);
    }
}
