//! Versioned wire messages.
//!
//! Every payload starts with one protocol version byte, then the postcard encoding of a
//! message from that version's module. Adding v2: create `v2.rs` with the new types, give it
//! `VERSION = 2`, teach [`crate::codec`] to accept both bytes, and keep decoding v1 for as
//! long as agents in the field may send it. Never change a v1 type in place: postcard is not
//! self-describing, so a changed field order or type silently misreads old payloads.

pub mod v1;
