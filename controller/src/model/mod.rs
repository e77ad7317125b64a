//! The domain's view types, below both the store (which returns them) and the admin API
//! (which serializes them): nothing here knows SQL or HTTP.

pub mod action_view;
pub mod approvals;
pub mod audit;
pub mod commands;
pub mod devices;
pub mod labels;
pub mod lifecycle;
pub mod role;
pub mod rollouts;
pub mod session;
pub mod unit_events;
