//! A live sign-in session as the store reads it on every request.

use crate::model::role::Role;

/// The user of a live session of an enabled user, read fresh on every request, so logout,
/// disabling, deletion and demotion apply at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: i64,
    pub name: String,
    pub role: Role,
    pub session_id: String,
    pub mfa_enabled: bool,
    pub must_change_password: bool,
}
