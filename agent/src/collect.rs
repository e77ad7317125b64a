//! Telemetry collection (being written).
