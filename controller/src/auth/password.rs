//! Password hashing with argon2id (PHC strings that record their own cost), the policy for
//! new passwords (length and zxcvbn strength), and random one-time passwords.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;

/// Argon2id cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Argon2Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes over the memory.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    /// The OWASP recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Errors from hashing passwords.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The configured cost is out of argon2's range.
    #[error("invalid argon2 cost: {0}")]
    Cost(argon2::Error),
    /// Hashing itself failed.
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Hashes and verifies passwords with argon2id. Holds a dummy hash made with the same cost
/// so that verifying for an unknown user costs the same as for a real one.
pub struct Passwords {
    argon2: Argon2<'static>,
    cost: Argon2Cost,
    dummy: String,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// Checks the cost and makes the dummy hash (one hash's worth of work).
    pub fn new(cost: Argon2Cost) -> Result<Self, PasswordError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(PasswordError::Cost)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut this = Self {
            argon2,
            cost,
            dummy: String::new(),
        };
        this.dummy = this.hash(&random_groups(4, 5))?;
        Ok(this)
    }

    /// PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`): parameters are recorded per
    /// hash so they can be raised later. Random salt from `OsRng`.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(PasswordError::Hash)
    }

    /// `None` (unknown user, or a user with no password) verifies against the dummy hash and
    /// returns false: the same work either way. A malformed stored hash does the same.
    /// Verification uses the parameters stored in the PHC string.
    pub fn verify(&self, stored: Option<&str>, password: &str) -> bool {
        match stored.and_then(|s| PasswordHash::new(s).ok()) {
            Some(hash) => self
                .argon2
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            None => {
                if let Ok(dummy) = PasswordHash::new(&self.dummy) {
                    let _ = self.argon2.verify_password(password.as_bytes(), &dummy);
                }
                false
            }
        }
    }

    /// True when the stored hash used different (e.g. weaker) parameters than the current
    /// cost, or another algorithm or version, or cannot be parsed, so the caller can re-hash
    /// after a successful login.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return true;
        };
        let current = hash.algorithm == Algorithm::Argon2id.ident()
            && hash.version == Some(Version::V0x13.into())
            && Params::try_from(&hash).is_ok_and(|p| {
                p.m_cost() == self.cost.memory_kib
                    && p.t_cost() == self.cost.iterations
                    && p.p_cost() == self.cost.parallelism
            });
        !current
    }
}

/// Fewest characters in a new password.
pub const MIN_CHARS: usize = 12;
/// Most bytes in a new password.
pub const MAX_BYTES: usize = 1024;
/// Lowest acceptable zxcvbn score (0-4).
const MIN_SCORE: u8 = 3;

/// Why a new password was refused; the Display text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Fewer than `min` characters.
    #[error("The password is too short: use at least {min} characters.")]
    TooShort { min: usize },
    /// More than `max` bytes.
    #[error("The password is too long: use at most {max} bytes.")]
    TooLong { max: usize },
    /// zxcvbn estimates it is easy to guess; `hint` is its warning and suggestions.
    #[error("The password is too easy to guess (strength {score} of 4, 3 needed). {hint}")]
    TooWeak { score: u8, hint: String },
}

/// At least 12 characters (chars, not bytes), at most 1024 bytes, and a zxcvbn score of 3 or
/// more; `user_inputs` (user name, "pifleet") are passed to zxcvbn so passwords built from
/// them score low.
pub fn check_policy(password: &str, user_inputs: &[&str]) -> Result<(), PolicyError> {
    if password.chars().count() < MIN_CHARS {
        return Err(PolicyError::TooShort { min: MIN_CHARS });
    }
    if password.len() > MAX_BYTES {
        return Err(PolicyError::TooLong { max: MAX_BYTES });
    }
    let entropy = zxcvbn::zxcvbn(password, user_inputs);
    let score = u8::from(entropy.score());
    if score >= MIN_SCORE {
        return Ok(());
    }
    let mut hints: Vec<String> = Vec::new();
    if let Some(feedback) = entropy.feedback() {
        hints.extend(feedback.warning().map(|w| w.to_string()));
        hints.extend(feedback.suggestions().iter().map(|s| s.to_string()));
    }
    if hints.is_empty() {
        hints.push("Add another word or two. Uncommon words are better.".to_owned());
    }
    Err(PolicyError::TooWeak {
        score,
        hint: hints.join(" "),
    })
}

/// Crockford's base32 alphabet in lowercase: 32 symbols (5 bits each) without i, l, o or u,
/// so nothing can be misread.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// `groups` groups of `len` random characters from [`ALPHABET`] joined by '-'; each character
/// carries 5 bits.
pub(crate) fn random_groups(groups: usize, len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(groups * (len + 1));
    for g in 0..groups {
        if g > 0 {
            out.push('-');
        }
        out.extend((0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])));
    }
    out
}

/// A random one-time password: 4 groups of 5 characters from an unambiguous lowercase and
/// digit alphabet joined by '-' (100 bits) that passes [`check_policy`].
pub fn one_time_password() -> String {
    loop {
        let password = random_groups(4, 5);
        // A random 100-bit string virtually always scores 4; the loop only guards the promise.
        if check_policy(&password, &[]).is_ok() {
            return password;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Argon2Cost = Argon2Cost {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn round_trip() {
        let pw = Passwords::new(FAST).unwrap();
        let h = pw.hash("correct horse").unwrap();
        assert!(pw.verify(Some(&h), "correct horse"));
        assert!(!pw.verify(Some(&h), "correct horsf"));
        assert!(!pw.verify(None, "correct horse"));
        assert!(!pw.verify(Some("not a hash"), "correct horse"));
        assert!(!pw.verify(Some("$argon2id$v=19$m=256,t=1,p=1$AAAA"), "x"));
        // Salts differ.
        assert_ne!(h, pw.hash("correct horse").unwrap());
    }

    #[test]
    fn phc_records_cost() {
        let pw = Passwords::new(FAST).unwrap();
        let h = pw.hash("x").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{h}");
    }

    #[test]
    fn bad_cost_refused() {
        let cost = Argon2Cost {
            memory_kib: 1,
            ..FAST
        };
        assert!(matches!(Passwords::new(cost), Err(PasswordError::Cost(_))));
    }

    #[test]
    fn rehash_after_raising_cost() {
        let weak = Passwords::new(FAST).unwrap();
        let strong = Passwords::new(Argon2Cost {
            memory_kib: 512,
            iterations: 2,
            parallelism: 1,
        })
        .unwrap();
        let old = weak.hash("secret words").unwrap();
        assert!(strong.needs_rehash(&old));
        assert!(!weak.needs_rehash(&old));
        // The old hash still verifies with the new cost: its own parameters are used.
        assert!(strong.verify(Some(&old), "secret words"));
        let new = strong.hash("secret words").unwrap();
        assert!(!strong.needs_rehash(&new));
        assert!(strong.needs_rehash("garbage"));
    }

    #[test]
    fn debug_has_no_hash() {
        let pw = Passwords::new(FAST).unwrap();
        let s = format!("{pw:?}");
        assert!(!s.contains("argon2id"), "{s}");
    }

    #[test]
    fn policy() {
        let inputs = ["alice", "pifleet"];
        assert_eq!(
            check_policy("short", &inputs),
            Err(PolicyError::TooShort { min: 12 })
        );
        // 11 characters but more than 12 bytes.
        assert!(matches!(
            check_policy("ééééééééééé", &inputs),
            Err(PolicyError::TooShort { .. })
        ));
        assert_eq!(
            check_policy(&"ab9-".repeat(257), &inputs),
            Err(PolicyError::TooLong { max: 1024 })
        );
        for weak in ["password1234", "alice1234567", "pifleet12345"] {
            match check_policy(weak, &inputs) {
                Err(e @ PolicyError::TooWeak { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.len() > 60, "unhelpful message: {msg}");
                }
                other => panic!("{weak}: {other:?}"),
            }
        }
        assert_eq!(
            check_policy("correct horse battery staple 42!", &inputs),
            Ok(())
        );
    }

    #[test]
    fn one_time_passwords_pass_policy() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = one_time_password();
            assert_eq!(p.len(), 23);
            assert_eq!(p.split('-').count(), 4);
            assert!(p.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
            check_policy(&p, &["alice", "pifleet"]).unwrap();
            assert!(seen.insert(p));
        }
    }
}
