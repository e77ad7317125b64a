//! Rollouts: taking a release to a fleet in batches that stop themselves on health.
//!
//! The rules are pure functions of the rollout's spec, its stored state, its devices and
//! the time passed in — no store, no clock, no network — so every rule is one table and
//! can be tested as one:
//! - [`spec`]: the immutable, validated spec (batches, threshold, bake time, abort rule,
//!   deadlines, download cap) and the assignment of devices to batches.
//! - [`state`]: the rollout's status, each device's state, and how device reports move it.
//! - [`decide`]: what to send, expire, pause or complete now.
//! - the operator actions: [`start`], [`request_approval`], [`approve`], [`pause`],
//!   [`resume`], [`abort`].
//!
//!
//! Around them: [`plan`] judges which targeted devices can take a release; [`service`]
//! creates rollouts, carries out operator actions and approvals, and makes one decision
//! against the store ([`step`]); [`runner`] is the task that makes those decisions
//! whenever something changes.
//!
//! Batches are cumulative: with a canary of 1 and `[50, 100]`, ten devices go out as 1,
//! then 4 more (5 in all), then the last 5. Incompatible devices (the caller decides which
//! before the rollout starts) are in no batch and no count, only in the summary.

mod actions;
mod engine;
pub mod plan;
pub mod runner;
pub mod service;
pub mod spec;
pub mod state;
mod step;
mod stored;
mod tally;
mod view;
pub mod views;
pub mod window;

#[cfg(test)]
mod tests;

pub use actions::{
    OperatorAction, RefusedTransition, Transition, abort, approve, operator_transition, pause,
    request_approval, resume, start,
};
pub use engine::{Deadline, Decision, Expiry, decide};
pub use service::RolloutError;
pub use spec::{InvalidSpec, RolloutSettings, RolloutSpec, SpecError, assign_batches};
pub use state::{DeviceReport, DeviceState, PauseCause, RolloutStatus};
pub use step::step;
pub use tally::Tally;
pub use view::{DeviceView, RolloutView, Waiver};
pub use window::{Window, WindowError};
