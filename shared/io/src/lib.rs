//! File and TLS helpers shared by the pifleet agent and controller.
//!
//! `pifleet-shared` stays pure (wire types and rules, no I/O); what both binaries do with
//! files and certificates lives here instead, written once: atomic private writes that
//! survive power loss, private directories, the PEM loaders, and the one rustls crypto
//! provider (ring), and the reading of TOML configuration files. Dependencies are std, rustls
//! and its PKI types, serde, toml and thiserror — all of which the agent links anyway.

pub mod files;
pub mod pinned;
pub mod tls;
pub mod toml_file;

pub use files::{FileError, create_private_dir, write_private};
pub use tls::{PemError, load_certs, load_crls, load_key, provider};
