//! File and TLS helpers shared by the pifleet agent and controller.
//!
//! `pifleet-shared` stays pure (wire types and rules, no I/O); what both binaries do with
//! files and certificates lives here instead, written once: atomic private writes that
//! survive power loss, private directories, the PEM loaders, and the one rustls crypto
//! provider (ring). Dependencies are std, rustls and its PKI types, and thiserror, so the
//! agent does not grow by linking it.

pub mod files;
pub mod tls;

pub use files::{FileError, create_private_dir, write_private};
pub use tls::{PemError, load_certs, load_crls, load_key, provider};
