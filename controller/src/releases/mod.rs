//! Application releases, without HTTP: an upload or a git commit becomes one canonical
//! archive ([`intake`], [`git`]) that devices decode and whose manifest the release key
//! signs.

pub mod git;
pub mod intake;

pub use git::{GitError, GitOptions};
pub use intake::{IntakeError, Limits, Packed};
