//! The pifleet end-to-end harness: starts the real `pifleet-controller` and `pifleet-agent`
//! binaries on ephemeral ports with temporary data dirs, and gives tests handles to them.
//! Also home of the fleet simulator used by benchmarks (`src/bin/`).
//!
//! The binaries must be built first (`cargo build --workspace`); the harness finds them next
//! to the test executable's target directory, or in `PIFLEET_BIN_DIR`.

pub mod api;
pub mod apikit;
pub mod authkit;
pub mod broker;
pub mod docgen;
pub mod fleetkit;
pub mod harness;
pub mod https;
pub mod logs;
pub mod mosquitto;
pub mod mqtt;
pub mod pgkit;
pub mod procstat;
pub mod promkit;
pub mod releasekit;
pub mod scalekit;
pub mod sim;
pub mod simkit;
