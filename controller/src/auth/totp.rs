//! Time-based one-time passwords (RFC 6238 with SHA-1, 6 digits and a 30 s step: what
//! authenticator apps support), their enrolment URI and QR code, and recovery codes.

use rand::RngCore;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP, TotpUrlError};

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "pifleet";
const DIGITS: usize = 6;
const STEP_S: u64 = 30;
/// Steps of clock skew accepted either way.
const SKEW: i64 = 1;

/// Errors from building a TOTP.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    /// The secret is shorter than 128 bits or the account name contains ':'.
    #[error("invalid TOTP parameters: {0}")]
    Invalid(#[from] TotpUrlError),
    /// The QR code could not be drawn.
    #[error("could not draw the QR code: {0}")]
    Qr(String),
}

/// `TOTP::new` checks the secret length (>= 128 bits) and that neither issuer nor account
/// contains ':', which would make the otpauth label ambiguous; such names are refused rather
/// than encoded with `new_unchecked`.
fn totp(secret: &[u8], account: &str) -> Result<TOTP, TotpError> {
    Ok(TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        SKEW as u8,
        STEP_S,
        secret.to_vec(),
        Some(ISSUER.to_owned()),
        account.to_owned(),
    )?)
}

/// A fresh 160-bit secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0; 20];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The otpauth:// URI for authenticator apps (issuer "pifleet", account = user name).
pub fn otpauth_uri(secret: &[u8], account: &str) -> Result<String, TotpError> {
    Ok(totp(secret, account)?.get_url())
}

/// A PNG QR code of that URI, base64 (no data: prefix).
pub fn qr_png_base64(secret: &[u8], account: &str) -> Result<String, TotpError> {
    totp(secret, account)?
        .get_qr_base64()
        .map_err(TotpError::Qr)
}

/// Checks a 6-digit code at `now_unix` allowing one step of clock skew either way. Returns
/// the time step that matched, but refuses a step <= `last_step` (a code, once used, cannot
/// be replayed). Codes are compared in constant time. Non-digit or wrong-length input, or an
/// invalid secret, returns None.
pub fn verify(secret: &[u8], code: &str, now_unix: u64, last_step: Option<i64>) -> Option<i64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "").ok()?;
    let now_step = i64::try_from(now_unix / STEP_S).ok()?;
    (now_step - SKEW..=now_step + SKEW)
        .filter(|&step| step >= 0 && last_step.is_none_or(|last| step > last))
        .find(|&step| {
            // `step` is non-negative and at most now_unix / 30 + 1, so this cannot overflow.
            let expected = totp.generate(step as u64 * STEP_S);
            constant_time_eq(expected.as_bytes(), code.as_bytes())
        })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The code for a time (used by tests and tooling).
pub fn code_at(secret: &[u8], unix: u64) -> Result<String, TotpError> {
    Ok(totp(secret, "")?.generate(unix))
}

/// Ten one-time recovery codes like "k7f2-9xq3-mm4p" (60 bits each, unambiguous alphabet).
pub fn recovery_codes() -> Vec<String> {
    (0..10)
        .map(|_| super::password::random_groups(3, 4))
        .collect()
}

/// SHA-256 hex of a recovery code after normalising (lowercase, spaces and dashes removed,
/// and o/i/l read as 0/1/1, which the alphabet lacks), so "K7F2 9XQ3 MM4P" matches.
pub fn hash_recovery_code(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        })
        .collect();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const NOW: u64 = 1_700_000_015;

    #[test]
    fn round_trip() {
        let s = new_secret();
        assert_eq!(s.len(), 20);
        let code = code_at(&s, NOW).unwrap();
        assert_eq!(code.len(), 6);
        let step = (NOW / 30) as i64;
        assert_eq!(verify(&s, &code, NOW, None), Some(step));
        assert_eq!(verify(&s, &code, NOW, Some(step - 1)), Some(step));
    }

    #[test]
    fn rfc6238_vector() {
        // RFC 6238 appendix B, SHA-1, truncated to 6 digits.
        let s = b"12345678901234567890";
        assert_eq!(code_at(s, 59).unwrap(), "287082");
        assert_eq!(code_at(s, 1_111_111_109).unwrap(), "081804");
    }

    #[test]
    fn skew() {
        let s = new_secret();
        let step = (NOW / 30) as i64;
        let prev = code_at(&s, NOW - 30).unwrap();
        let next = code_at(&s, NOW + 30).unwrap();
        assert_eq!(verify(&s, &prev, NOW, None), Some(step - 1));
        assert_eq!(verify(&s, &next, NOW, None), Some(step + 1));
        for far in [NOW - 60, NOW + 60] {
            let code = code_at(&s, far).unwrap();
            // A collision with a nearby step's code is possible but vanishingly rare.
            if [NOW - 30, NOW, NOW + 30]
                .iter()
                .all(|&t| code_at(&s, t).unwrap() != code)
            {
                assert_eq!(verify(&s, &code, NOW, None), None);
            }
        }
    }

    #[test]
    fn replay_refused() {
        let s = new_secret();
        let code = code_at(&s, NOW).unwrap();
        let used = verify(&s, &code, NOW, None).unwrap();
        assert_eq!(verify(&s, &code, NOW, Some(used)), None);
        assert_eq!(verify(&s, &code, NOW + 10, Some(used)), None);
        // A later code still works.
        let next = code_at(&s, NOW + 30).unwrap();
        assert_eq!(verify(&s, &next, NOW + 30, Some(used)), Some(used + 1));
    }

    #[test]
    fn garbage_refused() {
        let s = new_secret();
        let code = code_at(&s, NOW).unwrap();
        for bad in [
            "",
            "12345",
            "1234567",
            "abcdef",
            "12 345",
            "１２３４５６",
            &format!("{code} "),
            &format!("0{code}"),
        ] {
            assert_eq!(verify(&s, bad, NOW, None), None, "{bad:?}");
        }
        // A too-short secret is refused, not panicked on.
        assert_eq!(verify(&[1; 8], "123456", NOW, None), None);
        assert!(code_at(&[1; 8], NOW).is_err());
    }

    #[test]
    fn uri_and_qr() {
        let s = new_secret();
        let uri = otpauth_uri(&s, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/pifleet:alice?"), "{uri}");
        assert!(uri.contains("issuer=pifleet"), "{uri}");
        assert!(uri.contains("secret="), "{uri}");
        assert!(matches!(
            otpauth_uri(&s, "a:b"),
            Err(TotpError::Invalid(TotpUrlError::AccountName(_)))
        ));
        let png = base64::engine::general_purpose::STANDARD
            .decode(qr_png_base64(&s, "alice").unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    #[test]
    fn recovery() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), 10);
        for c in &codes {
            assert_eq!(c.len(), 14);
            assert_eq!(c.split('-').map(str::len).collect::<Vec<_>>(), [4, 4, 4]);
            assert_eq!(hash_recovery_code(c), hash_recovery_code(&c.to_uppercase()));
        }
        let h = hash_recovery_code("k7f2-9xq3-mm40");
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_recovery_code("K7F2 9XQ3 MM40"));
        assert_eq!(h, hash_recovery_code(" k7f29xq3mm4o "));
        assert_ne!(h, hash_recovery_code("k7f2-9xq3-mm41"));
    }
}
