//! Creating users, the same way from the command line and the admin API: the name rules,
//! the password policy, and a one-time password when none is given.

use crate::auth::Role;
use crate::auth::password::{self, Passwords};
use crate::store::users::UserChange;
use crate::store::{Store, StoreError};

/// Why a user was not created.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name or the password breaks the rules: the caller's mistake.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken.
    #[error(transparent)]
    Change(#[from] UserChange),
    /// Hashing the password failed: our failure, not the caller's.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A created user; `one_time_password` is set when the password was generated (it is shown
/// once and must be changed at first sign-in).
#[derive(Debug)]
pub struct CreatedUser {
    pub id: i64,
    pub name: String,
    pub one_time_password: Option<String>,
}

/// User names: 1-64 of a-z 0-9 . _ - starting with a letter or digit.
pub fn validate_user_name(name: &str) -> Result<(), UserError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "user name {name:?} must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )))
    }
}

/// Creates a user. With `password` None a one-time password is generated; a user created
/// with a generated password, or with `must_change`, must change it at first sign-in.
/// `hash` turns the password into its stored hash (the API bounds these argon2 runs, the
/// command line hashes directly: see [`hash_with`]).
pub async fn create_user<H, Fut>(
    store: &Store,
    hash: H,
    name: &str,
    role: Role,
    password: Option<&str>,
    must_change: bool,
) -> Result<CreatedUser, UserError>
where
    H: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, UserError>>,
{
    validate_user_name(name)?;
    let (password, generated) = match password {
        Some(p) => {
            password::check_policy(p, &[name, "pifleet"])
                .map_err(|e| UserError::Invalid(e.to_string()))?;
            (p.to_owned(), false)
        }
        None => (password::one_time_password(), true),
    };
    let hash = hash(password.clone()).await?;
    let id = store
        .create_user(name, role, &hash, must_change || generated)
        .await??;
    Ok(CreatedUser {
        id,
        name: name.to_owned(),
        one_time_password: generated.then_some(password),
    })
}

/// A `hash` for [`create_user`] that runs argon2 at once on this thread (command line).
pub fn hash_with(
    passwords: &Passwords,
) -> impl FnOnce(String) -> std::future::Ready<Result<String, UserError>> + '_ {
    move |password| std::future::ready(hash_error(passwords.hash(&password)))
}

/// A hashing failure as a [`UserError`].
pub fn hash_error<E: std::fmt::Display>(r: Result<String, E>) -> Result<String, UserError> {
    r.map_err(|e| UserError::Hash(e.to_string()))
}
