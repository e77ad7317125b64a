//! Password hashing with argon2id (PHC strings that record their own cost), the policy for
//! new passwords (length and zxcvbn strength), and random one-time passwords.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// The working memory of one argon2 run (`memory_kib` blocks of 1 KiB). The `*_in` methods
/// of [`Passwords`] run in one the caller keeps and reuses, so repeated runs do not leave
/// a fresh multi-MiB allocation to the allocator each time (which glibc keeps per thread
/// arena, taking the process far past runs × cost).
#[derive(Default)]
pub struct Memory(Vec<Block>);

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Memory({} KiB)", self.0.len())
    }
}

impl Memory {
    /// KiB held.
    pub fn kib(&self) -> usize {
        self.0.len()
    }

    /// At least `blocks` blocks, grown if needed.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::default());
        }
        &mut self.0[..blocks]
    }
}

/// Hashes and verifies passwords with argon2id. Holds a dummy hash made with the same cost
/// so that verifying for an unknown user costs the same as for a real one.
pub struct Passwords {
    params: Params,
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
        let mut this = Self {
            params,
            cost,
            dummy: String::new(),
        };
        this.dummy = this.hash(&random_groups(4, 5))?;
        Ok(this)
    }

    /// PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`): parameters are recorded per
    /// hash so they can be raised later. Random salt from `OsRng`.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        self.hash_in(password, &mut Memory::default())
    }

    /// [`Passwords::hash`] in `memory`.
    pub fn hash_in(&self, password: &str, memory: &mut Memory) -> Result<String, PasswordError> {
        let salt = SaltString::generate(&mut OsRng);
        let phc = run(
            Algorithm::Argon2id,
            Version::V0x13,
            self.params.clone(),
            salt.as_salt(),
            password.as_bytes(),
            memory,
        )
        .map_err(PasswordError::Hash)?;
        Ok(phc.to_string())
    }

    /// `None` (unknown user, or a user with no password) verifies against the dummy hash and
    /// returns false: the same work either way. A malformed stored hash does the same.
    /// Verification uses the parameters stored in the PHC string.
    pub fn verify(&self, stored: Option<&str>, password: &str) -> bool {
        self.verify_in(stored, password, &mut Memory::default())
    }

    /// [`Passwords::verify`] in `memory` (grown if the stored hash needs more).
    pub fn verify_in(&self, stored: Option<&str>, password: &str, memory: &mut Memory) -> bool {
        match stored.and_then(|s| PasswordHash::new(s).ok()) {
            Some(hash) => matches(&hash, password.as_bytes(), memory),
            None => {
                if let Ok(dummy) = PasswordHash::new(&self.dummy) {
                    let _ = matches(&dummy, password.as_bytes(), memory);
                }
                false
            }
        }
    }

    /// Blocks of memory one run at the configured cost takes.
    pub fn run_kib(&self) -> usize {
        self.params.block_count()
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

/// Argon2 of `password` with these settings, computed in `memory`, as a PHC hash (what the
/// argon2 crate's `PasswordHasher` does, without allocating the memory itself).
fn run<'a>(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Salt<'a>,
    password: &[u8],
    memory: &mut Memory,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = memory.blocks(params.block_count());
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let output = Output::init_with(output_len, |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Whether `password` matches the PHC `hash`, computed with the hash's own algorithm, version
/// and parameters (what `PasswordVerifier::verify_password` does). `Output` compares in
/// constant time.
fn matches(hash: &PasswordHash<'_>, password: &[u8], memory: &mut Memory) -> bool {
    let (Some(salt), Some(expected)) = (hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    run(algorithm, version, params, salt, password, memory)
        .ok()
        .and_then(|computed| computed.hash)
        .is_some_and(|computed| computed == *expected)
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

    /// Hashes made in reused memory are the argon2 crate's own, both ways.
    #[test]
    fn agrees_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pw = Passwords::new(FAST).unwrap();
        let mut memory = Memory::default();
        let ours = pw.hash_in("correct horse", &mut memory).unwrap();
        assert_eq!(memory.kib(), 256);
        let crate_argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(256, 1, 1, None).unwrap(),
        );
        assert!(
            crate_argon2
                .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = crate_argon2
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        // A bigger stored cost grows the memory; the same memory then serves smaller runs.
        let big = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(512, 2, 2, Some(16)).unwrap(),
        )
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
        for stored in [&ours, &theirs, &big] {
            assert!(
                pw.verify_in(Some(stored), "correct horse", &mut memory),
                "{stored}"
            );
            assert!(
                !pw.verify_in(Some(stored), "correct horsf", &mut memory),
                "{stored}"
            );
        }
        assert_eq!(memory.kib(), 512);
        assert!(pw.verify_in(Some(&ours), "correct horse", &mut memory));
        assert_eq!(pw.run_kib(), 256);
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
