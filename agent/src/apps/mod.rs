//! Application deployments on the device: the `[apps.NAME]` allowlist ([`config`]), the
//! app directory with its releases and `current` link ([`layout`]), and the per-app state
//! file holding the apply journal and the anti-rollback floor ([`journal`]).

pub mod config;
pub mod journal;
pub mod layout;

pub use config::AppConfig;
