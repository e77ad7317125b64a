//! Application releases, without HTTP: an upload becomes one canonical archive
//! ([`intake`]) that devices decode and whose manifest the release key signs.

pub mod intake;

pub use intake::{IntakeError, Limits, Packed};
