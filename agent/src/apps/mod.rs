//! Application deployments on the device: the `[apps.NAME]` allowlist ([`config`]), the
//! app directory with its releases and `current` link ([`layout`]), the per-app state
//! file holding the apply journal and the anti-rollback floor ([`journal`]), and the
//! streaming unpack of a release checked against its signed manifest ([`unpack`],
//! [`verify`]).

pub mod config;
pub mod journal;
pub mod layout;
pub mod unpack;
pub mod verify;

#[cfg(test)]
mod tests;

pub use config::AppConfig;
