//! Signed remote commands: the envelope, the actions a device can be asked to perform, name
//! validation, and receipts. Signing and verification live in [`crate::signing`].
//!
//! The point: even someone who controls the broker or the controller's database cannot make
//! a device run anything that a signed, fresh, never-seen, allowlisted command did not ask
//! for. The agent checks all of that with [`crate::signing::verify_command`] before anything
//! runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest lifetime a command may be given (issued_at → expires_at).
pub const MAX_TTL_MS: i64 = 7 * 24 * 3_600_000;
/// Longest unit or script name.
pub const MAX_NAME_LEN: usize = 128;
/// Most extra arguments a script invocation may carry.
pub const MAX_SCRIPT_ARGS: usize = 16;
/// Most journal lines a tail may ask for.
pub const MAX_JOURNAL_LINES: u32 = 1_000;
/// Most release keys one announcement may name.
pub const MAX_RELEASE_KEYS: usize = 8;
/// Most links a command key chain may carry.
pub const MAX_KEY_LINKS: usize = 32;

/// A random 128-bit command id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId(pub [u8; 16]);

impl CommandId {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        crate::token::from_hex(s).map(Self)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::token::to_hex(&self.0))
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({self})")
    }
}

/// Identifies a command-signing key: the first 8 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::token::to_hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What to do with a systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceOp {
    Status,
    Start,
    Stop,
    Restart,
}

impl ServiceOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }
}

/// Everything a device can be asked to do. There is deliberately no "run this command line".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Answers at once; proves the path works.
    Ping,
    /// status / start / stop / restart of an allowlisted systemd unit.
    Service { unit: String, op: ServiceOp },
    /// Reboot, scheduled after the result is sent.
    Reboot,
    /// The last `lines` journal lines of an allowlisted unit.
    JournalTail { unit: String, lines: u32 },
    /// An allowlisted script by name, with arguments from its declared set only.
    RunScript { name: String, args: Vec<String> },
    /// Change the telemetry interval (bounded by the agent's configuration).
    SetInterval { seconds: u32 },
    // Variants are only ever appended: postcard encodes the variant's index.
    /// Install release `release` of an allowlisted app. The device downloads the signed
    /// manifest and the archive from the controller it enrolled with (HTTPS, its device
    /// certificate), and installs only if the manifest's SHA-256 is `manifest_sha256`, it
    /// verifies against a pinned release key, and it names this app, this release and this
    /// archive (digest and size).
    Deploy {
        app: String,
        release: u64,
        manifest_sha256: [u8; 32],
        archive_sha256: [u8; 32],
        archive_size: u64,
        /// Install even if this release failed on the device before.
        retry_failed: bool,
    },
    /// Go back to release `release` of an app, which the device must still keep; its
    /// manifest (SHA-256 `manifest_sha256`) is downloaded and verified like a deploy's.
    Rollback {
        app: String,
        release: u64,
        manifest_sha256: [u8; 32],
    },
    /// The release keys (Ed25519 public keys, 1 to [`MAX_RELEASE_KEYS`]) the device is to
    /// trust from now on, replacing those the controller announced or enrollment wrote.
    /// Signed by the command key, so devices enrolled before releases existed learn them.
    TrustReleaseKeys { keys: Vec<[u8; 32]> },
    /// The command key history: Ed25519 keys oldest first, each after the first signed by
    /// the key before it; `signatures` holds those 64-byte signatures back to back (over
    /// [`crate::signing::link_message`]; plain bytes, so the agent reuses decoders it
    /// has). The device checks the links from the newest key it trusts
    /// ([`crate::signing::verify_chain`]), then trusts the last `keep` keys (those the
    /// controller still signs with) and no other. The command may be signed by any key the
    /// chain proves, so a device offline through several rotations catches up in one step.
    TrustCommandKeys {
        keys: Vec<[u8; 32]>,
        signatures: Vec<u8>,
        keep: u8,
    },
}

impl Action {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Service { .. } => "service",
            Self::Reboot => "reboot",
            Self::JournalTail { .. } => "journal",
            Self::RunScript { .. } => "script",
            Self::SetInterval { .. } => "set_interval",
            Self::Deploy { .. } => "deploy",
            Self::Rollback { .. } => "rollback",
            Self::TrustReleaseKeys { .. } => "trust_release_keys",
            Self::TrustCommandKeys { .. } => "trust_command_keys",
        }
    }

    /// The unit this action touches, if any (operations on one unit are serialized).
    pub fn unit(&self) -> Option<&str> {
        match self {
            Self::Service { unit, .. } | Self::JournalTail { unit, .. } => Some(unit),
            _ => None,
        }
    }

    /// The app a deploy or rollback touches.
    pub fn app(&self) -> Option<&str> {
        match self {
            Self::Deploy { app, .. } | Self::Rollback { app, .. } => Some(app),
            _ => None,
        }
    }

    /// Checks names and bounds that do not depend on the device's allowlist.
    pub fn validate(&self) -> Result<(), InvalidName> {
        match self {
            Self::Ping | Self::Reboot => Ok(()),
            Self::Deploy {
                app,
                release,
                archive_size,
                ..
            } => {
                validate_release(app, *release)?;
                if *archive_size == 0 {
                    return Err(InvalidName::Bound("archive size"));
                }
                Ok(())
            }
            Self::Rollback { app, release, .. } => validate_release(app, *release),
            Self::TrustReleaseKeys { keys } => validate_release_keys(keys),
            Self::TrustCommandKeys {
                keys,
                signatures,
                keep,
            } => {
                if keys.len() < 2
                    || keys.len() > MAX_KEY_LINKS + 1
                    || signatures.len() != 64 * (keys.len() - 1)
                    || *keep == 0
                    || usize::from(*keep) > keys.len()
                {
                    return Err(InvalidName::Bound("command key chain"));
                }
                Ok(())
            }
            Self::Service { unit, .. } => validate_name(unit),
            Self::JournalTail { unit, lines } => {
                validate_name(unit)?;
                if *lines == 0 || *lines > MAX_JOURNAL_LINES {
                    return Err(InvalidName::Bound("journal lines"));
                }
                Ok(())
            }
            Self::RunScript { name, args } => {
                validate_name(name)?;
                if args.len() > MAX_SCRIPT_ARGS {
                    return Err(InvalidName::Bound("script arguments"));
                }
                args.iter().try_for_each(|a| validate_arg(a))
            }
            Self::SetInterval { seconds } => {
                if *seconds == 0 {
                    return Err(InvalidName::Bound("interval"));
                }
                Ok(())
            }
        }
    }
}

/// Why a unit name, script name or argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("name is empty or longer than {MAX_NAME_LEN} characters")]
    Length,
    #[error("name starts with '-'")]
    LeadingDash,
    #[error("name contains '..'")]
    DotDot,
    #[error("name contains {0:?}")]
    Character(char),
    #[error("{0} out of bounds")]
    Bound(&'static str),
    #[error(
        "app name {0:?} must be 1-{max} of a-z 0-9 _ - starting with a letter or digit",
        max = crate::release::MAX_APP_NAME_LEN
    )]
    App(String),
    #[error("release keys: {0}")]
    ReleaseKeys(&'static str),
}

/// An app name ([`crate::release::valid_app_name`]) and a release number (1 or more).
fn validate_release(app: &str, release: u64) -> Result<(), InvalidName> {
    if !crate::release::valid_app_name(app) {
        let shown = app
            .chars()
            .take(crate::release::MAX_APP_NAME_LEN + 1)
            .collect();
        return Err(InvalidName::App(shown));
    }
    if release == 0 {
        return Err(InvalidName::Bound("release number"));
    }
    Ok(())
}

/// 1 to [`MAX_RELEASE_KEYS`] distinct keys, each a valid Ed25519 public key.
fn validate_release_keys(keys: &[[u8; 32]]) -> Result<(), InvalidName> {
    if keys.is_empty() || keys.len() > MAX_RELEASE_KEYS {
        return Err(InvalidName::ReleaseKeys("1 to 8 keys"));
    }
    for (i, k) in keys.iter().enumerate() {
        if ed25519_dalek::VerifyingKey::from_bytes(k).is_err() {
            return Err(InvalidName::ReleaseKeys("not an Ed25519 public key"));
        }
        if keys[..i].contains(k) {
            return Err(InvalidName::ReleaseKeys("a key is listed twice"));
        }
    }
    Ok(())
}

/// Unit and script names: 1–128 of `[A-Za-z0-9@._:+-]`, not starting with `-`, no `..`.
/// So no whitespace, no shell metacharacters, no path separators, no option injection.
pub fn validate_name(s: &str) -> Result<(), InvalidName> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(InvalidName::Length);
    }
    if s.starts_with('-') {
        return Err(InvalidName::LeadingDash);
    }
    if s.contains("..") {
        return Err(InvalidName::DotDot);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | ':' | '+' | '-')))
    {
        return Err(InvalidName::Character(c));
    }
    Ok(())
}

/// Script arguments: like names, plus `=` and `/` are allowed after the first character
/// (e.g. `--mode=full` is refused for its leading dash only if the script did not declare it;
/// declaration is checked by the agent's allowlist, which must match the argument exactly).
pub fn validate_arg(s: &str) -> Result<(), InvalidName> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(InvalidName::Length);
    }
    if s.contains("..") {
        return Err(InvalidName::DotDot);
    }
    if let Some(c) = s.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | ':' | '+' | '-' | '='))
    }) {
        return Err(InvalidName::Character(c));
    }
    Ok(())
}

/// The signed part of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: CommandId,
    /// The only device that may run it.
    pub device: String,
    /// Controller clock, Unix ms.
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub key_id: KeyId,
    pub action: Action,
}

/// What travels on `fleet/<id>/down/cmd`: the exact envelope bytes and their signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// Which key signed it (also inside the body, where it is covered by the signature).
    pub key_id: KeyId,
    /// postcard(Envelope): the signature covers exactly these bytes.
    pub body: Vec<u8>,
    /// Ed25519 signature, 64 bytes.
    pub signature: Vec<u8>,
}

/// Where a command is in its life on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Accepted,
    Running,
    Succeeded,
    Failed(String),
    Rejected(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed(_) => "failed",
            Self::Rejected(_) => "rejected",
        }
    }

    /// A final state: nothing more will be reported for the command.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed(_) | Self::Rejected(_))
    }
}

/// Captured output of a stream, capped; with the full length and hash of what was produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Output {
    /// At most the agent's output cap.
    pub data: Vec<u8>,
    /// Bytes produced in total.
    pub len: u64,
    /// SHA-256 of everything produced (not only of `data`).
    pub sha256: Vec<u8>,
}

/// A device's report on a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The command reported on. For a command too malformed to have a readable id, all zeros.
    pub command: CommandId,
    pub device: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout: Output,
    pub stderr: Output,
    /// Device clock, Unix ms.
    pub at_ms: i64,
}

/// What travels on `fleet/<id>/up/result`: the receipt bytes signed with the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// postcard(Receipt)
    pub body: Vec<u8>,
    /// ECDSA P-256/SHA-256 (ASN.1 DER) or Ed25519, by the device key.
    pub signature: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let ok = [
            "nginx.service",
            "getty@tty1.service",
            "kiosk",
            "app_v2",
            "a:b",
            "x+y",
        ];
        for n in ok {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
        let bad: &[(&str, InvalidName)] = &[
            ("", InvalidName::Length),
            ("nginx service", InvalidName::Character(' ')),
            ("a;reboot", InvalidName::Character(';')),
            ("$(reboot)", InvalidName::Character('$')),
            ("a`id`", InvalidName::Character('`')),
            ("--now", InvalidName::LeadingDash),
            ("-x", InvalidName::LeadingDash),
            ("../etc/passwd", InvalidName::DotDot),
            ("a/b", InvalidName::Character('/')),
            ("a|b", InvalidName::Character('|')),
            ("a&b", InvalidName::Character('&')),
            ("a\nb", InvalidName::Character('\n')),
            ("a\tb", InvalidName::Character('\t')),
            ("a>b", InvalidName::Character('>')),
            ("a*", InvalidName::Character('*')),
            ("é", InvalidName::Character('é')),
        ];
        for (n, e) in bad {
            assert_eq!(validate_name(n).as_ref(), Err(e), "{n:?}");
        }
        assert_eq!(
            validate_name(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(InvalidName::Length)
        );
    }

    #[test]
    fn args_allow_options_but_no_metacharacters() {
        assert_eq!(validate_arg("--dry-run"), Ok(()));
        assert_eq!(validate_arg("--mode=full"), Ok(()));
        assert_eq!(validate_arg("a b"), Err(InvalidName::Character(' ')));
        assert_eq!(validate_arg("x;y"), Err(InvalidName::Character(';')));
        assert_eq!(validate_arg("../x"), Err(InvalidName::DotDot));
    }

    #[test]
    fn action_bounds() {
        assert!(
            Action::JournalTail {
                unit: "a".into(),
                lines: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Action::JournalTail {
                unit: "a".into(),
                lines: MAX_JOURNAL_LINES + 1
            }
            .validate()
            .is_err()
        );
        assert!(Action::SetInterval { seconds: 0 }.validate().is_err());
        let many = Action::RunScript {
            name: "s".into(),
            args: vec!["a".into(); MAX_SCRIPT_ARGS + 1],
        };
        assert!(many.validate().is_err());
        assert!(
            Action::Service {
                unit: "x y".into(),
                op: ServiceOp::Start
            }
            .validate()
            .is_err()
        );
        assert!(Action::Ping.validate().is_ok());
    }

    fn deploy(app: &str, release: u64, archive_size: u64) -> Action {
        Action::Deploy {
            app: app.into(),
            release,
            manifest_sha256: [1; 32],
            archive_sha256: [2; 32],
            archive_size,
            retry_failed: false,
        }
    }

    #[test]
    fn release_actions_are_checked() {
        assert_eq!(deploy("web", 3, 10).validate(), Ok(()));
        assert_eq!(deploy("web", 3, 10).kind(), "deploy");
        assert_eq!(deploy("web", 3, 10).app(), Some("web"));
        let bad = [
            (deploy("Web", 1, 10), InvalidName::App("Web".into())),
            (deploy("", 1, 10), InvalidName::App(String::new())),
            (deploy("../x", 1, 10), InvalidName::App("../x".into())),
            (deploy("web", 0, 10), InvalidName::Bound("release number")),
            (deploy("web", 1, 0), InvalidName::Bound("archive size")),
        ];
        for (action, want) in bad {
            assert_eq!(action.validate(), Err(want), "{action:?}");
        }
        let rollback = |app: &str, release| Action::Rollback {
            app: app.into(),
            release,
            manifest_sha256: [0; 32],
        };
        assert_eq!(rollback("web", 2).validate(), Ok(()));
        assert_eq!(rollback("web", 2).kind(), "rollback");
        assert!(rollback("web", 0).validate().is_err());
        assert!(rollback("a b", 1).validate().is_err());
        assert_eq!(Action::Ping.app(), None);
    }

    #[test]
    fn release_key_announcements_are_checked() {
        let key = |seed: u8| {
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes()
        };
        let trust = |keys: Vec<[u8; 32]>| Action::TrustReleaseKeys { keys };
        assert_eq!(trust(vec![key(1)]).validate(), Ok(()));
        assert_eq!(trust(vec![key(1)]).kind(), "trust_release_keys");
        assert_eq!(trust((1..=8).map(key).collect()).validate(), Ok(()));
        let too_many = trust((1..=9).map(key).collect());
        for (action, why) in [
            (trust(vec![]), "1 to 8 keys"),
            (too_many, "1 to 8 keys"),
            (trust(vec![key(1), key(2), key(1)]), "a key is listed twice"),
        ] {
            assert_eq!(action.validate(), Err(InvalidName::ReleaseKeys(why)));
        }
        let not_a_point = (0u8..64)
            .map(|b| [b; 32])
            .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        assert_eq!(
            trust(vec![not_a_point]).validate(),
            Err(InvalidName::ReleaseKeys("not an Ed25519 public key"))
        );
    }

    /// New variants go at the end: the encodings of the older ones do not move.
    #[test]
    fn older_actions_keep_their_encoding() {
        let enc = |a: &Action| postcard::to_allocvec(a).unwrap();
        assert_eq!(enc(&Action::Ping), [0]);
        assert_eq!(enc(&Action::Reboot), [2]);
        assert_eq!(enc(&Action::SetInterval { seconds: 5 }), [5, 5]);
        assert_eq!(enc(&deploy("a", 1, 1))[0], 6);
        assert_eq!(enc(&Action::TrustReleaseKeys { keys: vec![] })[..2], [8, 0]);
        let d = deploy("web", 7, 99);
        assert_eq!(postcard::from_bytes::<Action>(&enc(&d)).unwrap(), d);
    }

    #[test]
    fn command_id_hex_roundtrip() {
        let id = CommandId([0xab; 16]);
        assert_eq!(CommandId::parse(&id.to_string()), Some(id));
        assert_eq!(CommandId::parse("zz"), None);
    }
}
