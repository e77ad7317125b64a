//! The pifleet controller.

pub mod pki;
