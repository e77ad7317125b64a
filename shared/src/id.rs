//! Device ids: 3–63 chars of `[a-z0-9-]`, not starting or ending with `-`.
//!
//! The same rule is a valid DNS label, so an id can be used as a certificate CN and SAN,
//! a topic level, a file name and a Prometheus label value without escaping.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Shortest accepted device id.
pub const MIN_LEN: usize = 3;
/// Longest accepted device id.
pub const MAX_LEN: usize = 63;

/// A validated device id. Constructing one is the only way to get one, so holding a
/// `DeviceId` proves the string passed [`DeviceId::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDeviceId {
    #[error("device id must be {MIN_LEN}-{MAX_LEN} characters, got {0}")]
    Length(usize),
    #[error("device id may only contain a-z, 0-9 and '-', found {0:?}")]
    Character(char),
    #[error("device id must not start or end with '-'")]
    Hyphen,
}

impl DeviceId {
    /// Validates `s` as a device id.
    pub fn parse(s: &str) -> Result<Self, InvalidDeviceId> {
        let len = s.len();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(InvalidDeviceId::Length(s.chars().count()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(InvalidDeviceId::Character(c));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(InvalidDeviceId::Hyphen);
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Turns any text (a hostname, say) into a valid id when it can: lowercases, maps other
    /// characters to `-`, trims hyphens and truncates. Returns `None` if nothing usable is left.
    pub fn sanitize(s: &str) -> Option<Self> {
        let cleaned: String = clean(s).chars().take(MAX_LEN).collect();
        Self::parse(cleaned.trim_end_matches('-')).ok()
    }
}

/// `s` lowercased, other characters mapped to `-`, runs of `-` collapsed, trimmed.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end_matches('-').to_owned()
}

impl DeviceId {
    /// `base` (sanitized, shortened to make room) followed by `-` and `suffix`, e.g.
    /// `raspberrypi-3fa1c09e`: the id a device takes when its hostname alone is taken or is
    /// not an id. `suffix` must be an id's characters; `base` may be anything (an empty or
    /// unusable one gives `pi-<suffix>`).
    pub fn with_suffix(base: &str, suffix: &str) -> Option<Self> {
        let room = MAX_LEN.checked_sub(suffix.len() + 1)?;
        let base: String = clean(base).chars().take(room).collect();
        let base = match base.trim_end_matches('-') {
            "" => "pi",
            b => b,
        };
        Self::parse(&format!("{base}-{suffix}")).ok()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixed_ids_fit_and_fall_back_to_pi() {
        let id = |b: &str| DeviceId::with_suffix(b, "3fa1c09e").map(|d| d.0);
        assert_eq!(id("raspberrypi").as_deref(), Some("raspberrypi-3fa1c09e"));
        assert_eq!(id("vm").as_deref(), Some("vm-3fa1c09e"), "too short alone");
        assert_eq!(id("--").as_deref(), Some("pi-3fa1c09e"));
        assert_eq!(id("").as_deref(), Some("pi-3fa1c09e"));
        assert_eq!(id("Kiosk_Lobby").as_deref(), Some("kiosk-lobby-3fa1c09e"));
        let long = "a".repeat(80);
        let got = id(&long).unwrap();
        assert_eq!(got.len(), MAX_LEN);
        assert!(got.ends_with("-3fa1c09e"));
        assert_eq!(DeviceId::with_suffix("pi", "NOT-VALID!"), None);
    }
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<(), InvalidDeviceId>)] = &[
            ("abc", Ok(())),
            ("pi-01", Ok(())),
            ("0a9", Ok(())),
            (&"a".repeat(63), Ok(())),
            ("ab", Err(InvalidDeviceId::Length(2))),
            ("", Err(InvalidDeviceId::Length(0))),
            (&"a".repeat(64), Err(InvalidDeviceId::Length(64))),
            ("Pi-01", Err(InvalidDeviceId::Character('P'))),
            ("pi_01", Err(InvalidDeviceId::Character('_'))),
            ("pi/01", Err(InvalidDeviceId::Character('/'))),
            ("pi+01", Err(InvalidDeviceId::Character('+'))),
            ("pi#01", Err(InvalidDeviceId::Character('#'))),
            ("pi 01", Err(InvalidDeviceId::Character(' '))),
            ("pi.01", Err(InvalidDeviceId::Character('.'))),
            ("-pi01", Err(InvalidDeviceId::Hyphen)),
            ("pi01-", Err(InvalidDeviceId::Hyphen)),
            ("pié", Err(InvalidDeviceId::Character('é'))),
        ];
        for (input, want) in cases {
            assert_eq!(DeviceId::parse(input).map(|_| ()), *want, "input {input:?}");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: Result<DeviceId, _> = serde_json_like("\"pi-1\"");
        assert!(ok.is_ok());
        let bad: Result<DeviceId, _> = serde_json_like("\"PI\"");
        assert!(bad.is_err());
    }

    fn serde_json_like(s: &str) -> Result<DeviceId, postcard::Error> {
        // Round-trip through postcard: a string encoded then decoded as DeviceId.
        let inner: String = s.trim_matches('"').to_owned();
        let bytes = postcard::to_allocvec(&inner)?;
        postcard::from_bytes(&bytes)
    }

    #[test]
    fn sanitize_hostnames() {
        assert_eq!(
            DeviceId::sanitize("Kiosk_Lobby.local").map(|d| d.0),
            Some("kiosk-lobby-local".into())
        );
        assert_eq!(DeviceId::sanitize("--").map(|d| d.0), None);
        assert_eq!(DeviceId::sanitize("a").map(|d| d.0), None);
        assert_eq!(
            DeviceId::sanitize(&"x".repeat(100)).map(|d| d.0.len()),
            Some(63)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_valid(s in "\\PC{0,80}") {
            if let Ok(id) = DeviceId::parse(&s) {
                prop_assert!(id.as_str().len() >= MIN_LEN && id.as_str().len() <= MAX_LEN);
                prop_assert!(!id.as_str().starts_with('-') && !id.as_str().ends_with('-'));
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn sanitize_output_is_valid(s in "\\PC{0,100}") {
            if let Some(id) = DeviceId::sanitize(&s) {
                prop_assert!(DeviceId::parse(id.as_str()).is_ok());
            }
        }
    }
}
