//! Application deployments on the device: the `[apps.NAME]` allowlist ([`config`]), the
//! app directory with its releases and `current` link ([`layout`]), the per-app state
//! file holding the apply journal and the anti-rollback floor ([`journal`]), and the
//! streaming unpack of a release checked against its signed manifest ([`unpack`],
//! [`verify`]), the health gate over systemd ([`health`]) and the app's hooks ([`hooks`]).

pub mod config;
pub mod health;
pub mod hooks;
pub mod journal;
pub mod layout;
pub mod unpack;
pub mod verify;

#[cfg(test)]
mod tests;

pub use config::AppConfig;
pub use health::{Systemctl, Systemd, Timing};
