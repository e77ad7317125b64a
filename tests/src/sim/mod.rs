//! The fleet simulator's parts (`pifleet-sim`): lean simulated devices, the worker
//! processes that hold them, what they connect to, and the merged report.

pub mod client;
pub mod commands;
pub mod hist;
pub mod mosquitto;
pub mod procs;
pub mod proto;
pub mod report;
pub mod state;
pub mod target;
pub mod worker;
