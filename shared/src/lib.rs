//! Wire types and pure rules shared by the pifleet agent and controller.
//!
//! Nothing here does I/O or depends on an async runtime: the agent, the controller and the
//! test harness all use the same definitions of device ids, topics, the topic ACL, message
//! kinds with their size limits, and the versioned codec.

pub mod acl;
pub mod codec;
pub mod command;
pub mod enroll;
pub mod id;
pub mod proto;
pub mod release;
pub mod signing;
pub mod token;
pub mod topic;

pub use codec::{DecodeError, decode, encode};
pub use id::{DeviceId, InvalidDeviceId};
pub use topic::{AclDenied, Direction, Kind, Topic};
