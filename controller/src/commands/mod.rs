//! Signed remote commands: creating and dispatching them, and the lifecycle a command
//! moves through as its device's receipts arrive.

pub mod dispatch;
