//! Releases for the end-to-end tests: what a test deploys, with a health gate short enough
//! that a deploy settles in about a second.

use pifleet_controller::releases::NewRelease;
use pifleet_shared::release::HealthSpec;

/// A release of `app` at `version` for `arches` (empty: any), started within 10 s, healthy
/// after a one-second soak, no probe or hooks.
pub fn quick_release(app: &str, version: String, arches: Vec<String>) -> NewRelease {
    NewRelease {
        app: app.into(),
        version,
        arches,
        health: HealthSpec {
            start_timeout_s: 10,
            soak_s: 1,
            probe: None,
            probe_passes: 1,
            probe_interval_s: 1,
        },
        hooks: vec![],
        created_by: "test".into(),
    }
}
