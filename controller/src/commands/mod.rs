//! Signed commands: creating and dispatching them (dispatch.rs), and the lifecycle a command
//! moves through as its device's receipts arrive; deploy commands made from a release
//! (deploy.rs) and the announcement of the release keys (release_keys.rs).

pub mod command_keys;
pub mod deploy;
pub mod dispatch;
pub mod receipt_keys;
pub mod release_keys;
pub mod signers;
