//! The enrollment exchange: the JSON bodies of `POST /api/v1/enroll`, sent by
//! `pifleet-agent enroll` and answered by the controller.
//!
//! Unlike [`crate::proto`], these travel as JSON, matched by field name: renaming a field
//! here changes both sides at once, but breaks agents already in the field, so never rename
//! or remove a v1 field. Adding v2: create `v2.rs` with the new bodies, serve them at
//! `/api/v2/enroll` next to v1, and keep v1 for as long as agents that speak it may enroll.
//! The controller documents these types in OpenAPI through mirrors of its own (this crate
//! has no utoipa), and tests that each mirror serializes exactly like the type here.

pub mod v1;
