//! Enrollment tokens: `pft1.<secret>.<ca-fingerprint>`, both parts 64 lowercase hex digits.
//!
//! The secret is single-use and stored by the controller only as a hash. The CA fingerprint
//! (SHA-256 of the CA certificate DER) lets the agent pin the controller on first contact,
//! before it has any other trust anchor.

use std::fmt;

const PREFIX: &str = "pft1";

/// A parsed enrollment token. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    secret: [u8; 32],
    ca_fingerprint: [u8; 32],
}

/// Why a string is not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("not a pifleet enrollment token (expected pft1.<64 hex>.<64 hex>)")]
    Format,
}

impl EnrollToken {
    pub fn new(secret: [u8; 32], ca_fingerprint: [u8; 32]) -> Self {
        Self {
            secret,
            ca_fingerprint,
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidToken> {
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(secret), Some(fpr), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidToken::Format);
        };
        Ok(Self {
            secret: from_hex(secret).ok_or(InvalidToken::Format)?,
            ca_fingerprint: from_hex(fpr).ok_or(InvalidToken::Format)?,
        })
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn ca_fingerprint(&self) -> &[u8; 32] {
        &self.ca_fingerprint
    }

    /// The CA fingerprint as lowercase hex.
    pub fn ca_fingerprint_hex(&self) -> String {
        to_hex(&self.ca_fingerprint)
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}",
            to_hex(&self.secret),
            to_hex(&self.ca_fingerprint)
        )
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollToken")
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint_hex())
            .finish()
    }
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Exactly `N` bytes from `2N` lowercase hex digits.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_redaction() {
        let t = EnrollToken::new([7; 32], [0xab; 32]);
        let s = t.to_string();
        assert!(s.starts_with("pft1."));
        assert_eq!(s.len(), 4 + 1 + 64 + 1 + 64);
        assert_eq!(EnrollToken::parse(&s), Ok(t.clone()));
        assert!(!format!("{t:?}").contains(&to_hex(&[7; 32])));
    }

    #[test]
    fn refuses_malformed() {
        let good = EnrollToken::new([1; 32], [2; 32]).to_string();
        let cases = [
            String::new(),
            "pft1".into(),
            good.replacen("pft1", "pft2", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            format!("{good}.x"),
            good.to_uppercase(),
            good.replace('.', "-"),
        ];
        for c in cases {
            assert_eq!(EnrollToken::parse(&c), Err(InvalidToken::Format), "{c:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = EnrollToken::parse(&s);
        }
    }
}
