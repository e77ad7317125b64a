//! Admin authentication: password hashing and policy, TOTP, JWT access tokens and opaque
//! refresh tokens, roles and the one permission table that decides every route.

pub mod api_tokens;
pub mod hasher;
pub mod jwt;
pub mod lockout;
pub mod password;
pub mod rbac;
pub mod tokens;
pub mod totp;
pub mod users;

pub use rbac::{Permission, Role};
