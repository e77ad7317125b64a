//! Application releases: the manifest every release carries and its rules.
//!
//! A release is one archive (gzip-compressed tar, the only format devices decode) plus a
//! manifest naming every entry with its size, mode and SHA-256, the archive's own digest and
//! size, the health gate the device applies after switching to it, and which of the app's
//! allowlisted hooks to run. The manifest is signed with a release key — an Ed25519 key that
//! is not the command key, so a key kept offline can publish releases — and devices pin the
//! release public keys ([`crate::signing::TrustedKey`]) and refuse anything else
//! ([`verify_manifest`]). The rules here are checked by the controller when it builds a
//! release and again by the device before it unpacks one.

use serde::{Deserialize, Serialize};

use crate::command::{KeyId, MAX_NAME_LEN};

mod paths;
mod signing;
#[cfg(test)]
mod tests;

pub use paths::{PathError, check_entry_path, check_link_target};
pub use signing::{ManifestError, ReleaseSigner, verify_manifest};

/// Longest app name.
pub const MAX_APP_NAME_LEN: usize = 64;

/// App names: 1-64 of a-z 0-9 _ - starting with a letter or digit. They name a directory
/// on the device and a section of its agent.toml, so nothing else is allowed.
pub fn valid_app_name(s: &str) -> bool {
    (1..=MAX_APP_NAME_LEN).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Most entries (files, directories, links) in one release.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest entry path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest version text.
pub const MAX_VERSION_LEN: usize = 64;
/// Most architectures one release names.
pub const MAX_ARCHES: usize = 8;
/// Hooks a release may ask for (each must also be allowlisted for the app on the device).
pub const HOOKS: [&str; 2] = ["pre_start", "post_switch"];
/// Mode bits an entry may carry: permissions only (no setuid, setgid or sticky bit).
pub const MODE_MASK: u32 = 0o777;
/// Largest signed manifest a device accepts, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 32 * 1024 * 1024;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file: `size` bytes with digest `sha256`.
    File { size: u64, sha256: Digest },
    /// A directory.
    Dir,
    /// A symbolic link to a relative target that stays inside the release.
    Symlink { target: String },
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators ([`check_entry_path`]).
    pub path: String,
    /// Permission bits ([`MODE_MASK`]).
    pub mode: u32,
    pub kind: EntryKind,
}

/// An HTTP or command probe the health gate runs after the unit is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// GET `http://127.0.0.1:<port><path>` must answer 2xx.
    Http { port: u16, path: String },
    /// The app's allowlisted probe command (`[apps.NAME] probe`) must exit 0.
    Command,
}

/// How the device decides a release is healthy after switching to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// The unit must be active (READY=1 for `Type=notify`) within this many seconds.
    pub start_timeout_s: u32,
    /// Then stay active, its restart count unchanged, for this many seconds.
    pub soak_s: u32,
    /// An optional probe that must pass `probe_passes` times in a row during the soak.
    pub probe: Option<Probe>,
    pub probe_passes: u32,
    /// The probe runs every this many seconds.
    pub probe_interval_s: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            start_timeout_s: 60,
            soak_s: 60,
            probe: None,
            probe_passes: 3,
            probe_interval_s: 5,
        }
    }
}

/// A release's manifest: what the release key signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The app, as allowlisted on devices (`[apps.NAME]`).
    pub app: String,
    /// Human version text (free form, e.g. `1.4.2` or a git revision).
    pub version: String,
    /// Release number: increases with every release of the app; devices refuse a lower one
    /// than they committed unless told to roll back.
    pub release: u64,
    /// Architectures the release runs on (`uname -m`: `aarch64`, `armv7l`…); empty: any.
    pub arches: Vec<String>,
    /// SHA-256 and size of the archive (gzip-compressed tar).
    pub archive_sha256: Digest,
    pub archive_size: u64,
    /// Sum of the file sizes: what unpacking writes.
    pub unpacked_size: u64,
    /// Every entry of the archive, in archive order.
    pub entries: Vec<Entry>,
    pub health: HealthSpec,
    /// Which of the app's allowlisted hooks to run ([`HOOKS`]).
    pub hooks: Vec<String>,
    /// When the release was made, Unix ms.
    pub created_at_ms: i64,
}

/// Why a manifest breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidManifest {
    #[error(
        "app name {0:?} must be 1-{MAX_APP_NAME_LEN} of a-z 0-9 _ - starting with a letter or digit"
    )]
    App(String),
    #[error("version must be 1-{MAX_VERSION_LEN} printable characters")]
    Version,
    #[error("release number must be at least 1")]
    Release,
    #[error("at most {MAX_ARCHES} architectures, each 1-32 of a-z 0-9 _")]
    Arches,
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("{path}: {error}")]
    Path { path: String, error: PathError },
    #[error("{0}: listed twice")]
    Duplicate(String),
    #[error("{0}: inside a symbolic link")]
    BelowLink(String),
    #[error("{path}: mode {mode:o} has bits beyond permissions (setuid, setgid or sticky)")]
    Mode { path: String, mode: u32 },
    #[error("the files add up to more than the stated unpacked size")]
    UnpackedSize,
    #[error("unknown hook {0:?} (known: pre_start, post_switch)")]
    Hook(String),
    #[error("health: {0}")]
    Health(&'static str),
}

impl Manifest {
    /// Checks every rule: names, counts, each path and link target, modes, sizes, hooks.
    pub fn validate(&self) -> Result<(), InvalidManifest> {
        if !valid_app_name(&self.app) {
            return Err(InvalidManifest::App(self.app.clone()));
        }
        if self.version.is_empty()
            || self.version.chars().count() > MAX_VERSION_LEN
            || self.version.chars().any(char::is_control)
        {
            return Err(InvalidManifest::Version);
        }
        if self.release == 0 {
            return Err(InvalidManifest::Release);
        }
        let arch_ok = |a: &String| {
            (1..=32).contains(&a.len())
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if self.arches.len() > MAX_ARCHES || !self.arches.iter().all(arch_ok) {
            return Err(InvalidManifest::Arches);
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(InvalidManifest::TooManyEntries);
        }
        let mut seen = std::collections::HashSet::with_capacity(self.entries.len());
        let mut total: u64 = 0;
        for e in &self.entries {
            let bad = |error| InvalidManifest::Path {
                path: e.path.chars().take(MAX_NAME_LEN).collect(),
                error,
            };
            check_entry_path(&e.path).map_err(bad)?;
            if !seen.insert(e.path.as_str()) {
                return Err(InvalidManifest::Duplicate(e.path.clone()));
            }
            if e.mode & !MODE_MASK != 0 {
                return Err(InvalidManifest::Mode {
                    path: e.path.clone(),
                    mode: e.mode,
                });
            }
            match &e.kind {
                EntryKind::File { size, .. } => total = total.saturating_add(*size),
                EntryKind::Dir => {}
                EntryKind::Symlink { target } => check_link_target(&e.path, target).map_err(bad)?,
            }
        }
        // Nothing may be unpacked through a link: every entry's folders are real folders.
        let links: std::collections::HashSet<&str> = self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
            .map(|e| e.path.as_str())
            .collect();
        if !links.is_empty() {
            for e in &self.entries {
                let mut prefix = e.path.as_str();
                while let Some((parent, _)) = prefix.rsplit_once('/') {
                    if links.contains(parent) {
                        return Err(InvalidManifest::BelowLink(e.path.clone()));
                    }
                    prefix = parent;
                }
            }
        }
        if total > self.unpacked_size {
            return Err(InvalidManifest::UnpackedSize);
        }
        if let Some(h) = self.hooks.iter().find(|h| !HOOKS.contains(&h.as_str())) {
            return Err(InvalidManifest::Hook(h.clone()));
        }
        let h = &self.health;
        if h.start_timeout_s == 0 {
            return Err(InvalidManifest::Health(
                "start_timeout_s must be at least 1",
            ));
        }
        if h.probe.is_some() && (h.probe_passes == 0 || h.probe_interval_s == 0) {
            return Err(InvalidManifest::Health(
                "a probe needs probe_passes and probe_interval_s of at least 1",
            ));
        }
        if let Some(Probe::Http { path, .. }) = &h.probe
            && (!path.starts_with('/') || path.len() > 1024 || path.chars().any(char::is_control))
        {
            return Err(InvalidManifest::Health(
                "an HTTP probe path starts with '/' and has at most 1024 printable characters",
            ));
        }
        Ok(())
    }

    /// The directory name of this release on a device: `<release>-<first 8 hex of digest>`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}-{}",
            self.release,
            &crate::token::to_hex(&self.archive_sha256)[..8]
        )
    }
}

/// A manifest as the release key signed it: the exact postcard bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    pub key_id: KeyId,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}
