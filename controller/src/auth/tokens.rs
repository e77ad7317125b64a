//! Opaque secrets of sign-in sessions: refresh tokens (only their SHA-256 is stored),
//! session ids and CSRF values.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    pifleet_shared::token::to_hex(&b)
}

/// A new refresh token: `pfr1.` and 256 random bits.
pub fn new_refresh_token() -> String {
    format!("pfr1.{}", random_hex(32))
}

/// SHA-256 of a refresh token: the database never holds a usable token.
pub fn refresh_hash(token: &str) -> String {
    pifleet_shared::token::to_hex(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert!(a.starts_with("pfr1."));
        assert_eq!(refresh_hash(&a).len(), 64);
        assert_ne!(refresh_hash(&a), a);
    }
}
