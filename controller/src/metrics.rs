//! Controller metrics, registered in one registry. Labels are bounded (reasons, kinds,
//! outcomes): never a device id here.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the controller keeps.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The standard `process_*` metrics, without our prefix.
    pub process: Registry,
    pub mqtt_connections: IntGauge,
    pub mqtt_connects: IntCounter,
    pub mqtt_disconnects: IntCounterVec,
    pub mqtt_refused: IntCounterVec,
    pub mqtt_acl_violations: IntCounterVec,
    pub mqtt_throttled: IntCounter,
    pub mqtt_messages_in: IntCounterVec,
    pub mqtt_bytes_in: IntCounter,
    pub mqtt_messages_out: IntCounterVec,
    pub mqtt_bytes_out: IntCounter,
    pub mqtt_out_dropped: IntCounterVec,
    pub mqtt_connection_limit: IntGauge,
    pub ingest_queue_depth: IntGauge,
    pub ingest_dropped: IntCounterVec,
    pub ingest_samples: IntCounter,
    pub ingest_commit_failures: IntCounter,
    pub ingest_batch_samples: Histogram,
    pub ingest_commit_seconds: Histogram,
    pub enrollments: IntCounterVec,
    pub commands: IntCounterVec,
    pub auth_events: IntCounterVec,
    pub auth_busy: IntCounter,
    pub command_roundtrip_seconds: Histogram,
    pub agent_spool_dropped: IntCounter,
    pub watchdog_events: IntCounterVec,
    pub rollouts: IntGaugeVec,
    pub https_refused: IntCounterVec,
    pub https_connections: IntGauge,
    pub https_preauth_connections: IntGauge,
    pub mqtt_preauth_connections: IntGauge,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub devices: IntGaugeVec,
    pub database_size_bytes: IntGauge,
    pub server_cert_expiry: IntGauge,
    pub ready: IntGaugeVec,
    pub backup_last_success: IntGauge,
    /// Unrevoked devices flagged for an admin's review (re-registered after a restore).
    pub devices_needing_review: IntGauge,
    pub renewals: IntCounterVec,
    pub renewal_overdue: IntGauge,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("pifleet".into()), None)?;
        let m = Self {
            mqtt_connections: IntGauge::new("mqtt_connections", "Open device connections")?,
            mqtt_connects: IntCounter::new(
                "mqtt_connects_total",
                "Device connections accepted after CONNECT",
            )?,
            mqtt_disconnects: IntCounterVec::new(
                Opts::new("mqtt_disconnects_total", "Device disconnections by reason"),
                &["reason"],
            )?,
            mqtt_refused: IntCounterVec::new(
                Opts::new(
                    "mqtt_refused_total",
                    "Connections refused before CONNECT completed, by reason",
                ),
                &["reason"],
            )?,
            mqtt_acl_violations: IntCounterVec::new(
                Opts::new(
                    "mqtt_acl_violations_total",
                    "Protocol or topic ACL violations that closed a connection",
                ),
                &["reason"],
            )?,
            mqtt_throttled: IntCounter::new(
                "mqtt_throttled_total",
                "Device messages delayed because the device was over its message budget",
            )?,
            mqtt_messages_in: IntCounterVec::new(
                Opts::new("mqtt_messages_in_total", "Messages published by devices"),
                &["kind"],
            )?,
            mqtt_bytes_in: IntCounter::new(
                "mqtt_bytes_in_total",
                "Payload bytes published by devices",
            )?,
            mqtt_messages_out: IntCounterVec::new(
                Opts::new(
                    "mqtt_messages_out_total",
                    "Messages the controller published to devices",
                ),
                &["kind"],
            )?,
            mqtt_bytes_out: IntCounter::new(
                "mqtt_bytes_out_total",
                "Payload bytes the controller published to devices",
            )?,
            mqtt_out_dropped: IntCounterVec::new(
                Opts::new(
                    "mqtt_out_dropped_total",
                    "Messages for devices not sent, by reason (offline, not_subscribed, queue_full)",
                ),
                &["reason"],
            )?,
            mqtt_connection_limit: IntGauge::new(
                "mqtt_connection_limit",
                "Most device connections this process accepts (mqtt.max_connections, lowered to fit the open-file limit)",
            )?,
            ingest_queue_depth: IntGauge::new(
                "ingest_queue_depth",
                "Device messages waiting for the database writer (bounded by ingest.queue_capacity)",
            )?,
            ingest_dropped: IntCounterVec::new(
                Opts::new(
                    "ingest_dropped_total",
                    "Device messages dropped by ingest, by reason",
                ),
                &["reason"],
            )?,
            ingest_samples: IntCounter::new(
                "ingest_samples_total",
                "Telemetry samples committed (including idempotent re-sends)",
            )?,
            ingest_commit_failures: IntCounter::new(
                "ingest_commit_failures_total",
                "Batch commits that failed and were retried (nothing was acknowledged)",
            )?,
            ingest_batch_samples: Histogram::with_opts(
                HistogramOpts::new("ingest_batch_samples", "Samples per committed batch")
                    .buckets(vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0]),
            )?,
            ingest_commit_seconds: Histogram::with_opts(
                HistogramOpts::new("ingest_commit_seconds", "Duration of one batch commit")
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
            )?,
            enrollments: IntCounterVec::new(
                Opts::new("enrollments_total", "Enrollment attempts by outcome"),
                &["outcome"],
            )?,
            commands: IntCounterVec::new(
                Opts::new("commands_total", "Commands by action and outcome"),
                &["action", "outcome"],
            )?,
            auth_events: IntCounterVec::new(
                Opts::new(
                    "auth_events_total",
                    "Admin sign-in events: success, failure, lockout, mfa_failure, refresh_reuse",
                ),
                &["event"],
            )?,
            auth_busy: IntCounter::new(
                "auth_busy_total",
                "Sign-ins and password changes refused with 503 because the argon2 queue was full",
            )?,
            watchdog_events: IntCounterVec::new(
                Opts::new(
                    "watchdog_events_total",
                    "Events the devices' service watchdogs reported, by kind (crash_loop, \
                     flapping, gave_up, starting, budget_spent, recovered)",
                ),
                &["kind"],
            )?,
            rollouts: IntGaugeVec::new(
                Opts::new(
                    "rollouts",
                    "Rollouts by status, and for paused ones why (operator, batch_failed, \
                     no_results, abort_rule)",
                ),
                &["status", "pause_cause"],
            )?,
            agent_spool_dropped: IntCounter::new(
                "agent_spool_dropped_total",
                "Samples the devices' full spools dropped (oldest first), as they reported",
            )?,
            command_roundtrip_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "command_roundtrip_seconds",
                    "Command sent to the device → its final signed receipt stored",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.5, 14)?),
            )?,
            https_refused: IntCounterVec::new(
                Opts::new(
                    "https_refused_total",
                    "HTTPS connections closed at accept, by reason: per_source (its source \
                     had used its share of https.preauth_per_source), max_connections",
                ),
                &["reason"],
            )?,
            https_connections: IntGauge::new(
                "https_connections",
                "Open HTTPS connections (bounded by https.max_connections)",
            )?,
            mqtt_preauth_connections: IntGauge::new(
                "mqtt_preauth_connections",
                "Device connections accepted that have not finished TLS and CONNECT",
            )?,
            https_preauth_connections: IntGauge::new(
                "https_preauth_connections",
                "HTTPS connections that have not sent their first request yet (bounded by \
                 https.preauth_max)",
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "HTTPS requests by method, route template and status",
                ),
                &["method", "route", "status"],
            )?,
            http_request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTPS request duration by method and route template",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.5, 14)?),
                &["method", "route"],
            )?,
            devices: IntGaugeVec::new(
                Opts::new(
                    "devices",
                    "Devices by state: enrolled, online, offline, revoked",
                ),
                &["state"],
            )?,
            database_size_bytes: IntGauge::new(
                "database_size_bytes",
                "Size of the SQLite database and its write-ahead log",
            )?,
            server_cert_expiry: IntGauge::new(
                "server_certificate_expiry_timestamp_seconds",
                "Expiry of the controller's server certificate (Unix seconds)",
            )?,
            ready: IntGaugeVec::new(
                Opts::new(
                    "ready",
                    "1 while a component works, 0 while it retries a failing dependency",
                ),
                &["component"],
            )?,
            backup_last_success: IntGauge::new(
                "backup_last_success_timestamp_seconds",
                "When the newest backup was written (Unix seconds; 0: none yet)",
            )?,
            devices_needing_review: IntGauge::new(
                "devices_needing_review",
                "Unrevoked devices flagged for review (re-registered after a restore)",
            )?,
            renewals: IntCounterVec::new(
                Opts::new(
                    "certificate_renewals_total",
                    "Device certificate renewals over MQTT by outcome (issued, refused_*, error)",
                ),
                &["outcome"],
            )?,
            renewal_overdue: IntGauge::new(
                "device_certificates_renewal_overdue",
                "Unrevoked devices whose newest certificate has less than a sixth of its \
                 lifetime left (renewal is due at a third)",
            )?,
            registry,
            process: Registry::new(),
        };
        let r = &m.registry;
        r.register(Box::new(m.mqtt_connections.clone()))?;
        r.register(Box::new(m.mqtt_connects.clone()))?;
        r.register(Box::new(m.mqtt_disconnects.clone()))?;
        r.register(Box::new(m.mqtt_refused.clone()))?;
        r.register(Box::new(m.mqtt_acl_violations.clone()))?;
        r.register(Box::new(m.mqtt_throttled.clone()))?;
        r.register(Box::new(m.mqtt_messages_in.clone()))?;
        r.register(Box::new(m.mqtt_bytes_in.clone()))?;
        r.register(Box::new(m.mqtt_messages_out.clone()))?;
        r.register(Box::new(m.mqtt_bytes_out.clone()))?;
        r.register(Box::new(m.mqtt_out_dropped.clone()))?;
        r.register(Box::new(m.mqtt_connection_limit.clone()))?;
        r.register(Box::new(m.ingest_queue_depth.clone()))?;
        r.register(Box::new(m.ingest_dropped.clone()))?;
        r.register(Box::new(m.ingest_samples.clone()))?;
        r.register(Box::new(m.ingest_commit_failures.clone()))?;
        r.register(Box::new(m.ingest_batch_samples.clone()))?;
        r.register(Box::new(m.ingest_commit_seconds.clone()))?;
        r.register(Box::new(m.enrollments.clone()))?;
        r.register(Box::new(m.commands.clone()))?;
        r.register(Box::new(m.auth_events.clone()))?;
        r.register(Box::new(m.auth_busy.clone()))?;
        r.register(Box::new(m.command_roundtrip_seconds.clone()))?;
        r.register(Box::new(m.agent_spool_dropped.clone()))?;
        r.register(Box::new(m.watchdog_events.clone()))?;
        // Served at 0 from the start, so rates and alerts see every kind.
        for kind in [
            "crash_loop",
            "flapping",
            "gave_up",
            "starting",
            "budget_spent",
            "recovered",
        ] {
            m.watchdog_events.with_label_values(&[kind]);
        }
        r.register(Box::new(m.rollouts.clone()))?;
        r.register(Box::new(m.https_refused.clone()))?;
        r.register(Box::new(m.https_connections.clone()))?;
        r.register(Box::new(m.https_preauth_connections.clone()))?;
        r.register(Box::new(m.mqtt_preauth_connections.clone()))?;
        r.register(Box::new(m.http_requests.clone()))?;
        r.register(Box::new(m.http_request_seconds.clone()))?;
        r.register(Box::new(m.devices.clone()))?;
        r.register(Box::new(m.database_size_bytes.clone()))?;
        r.register(Box::new(m.server_cert_expiry.clone()))?;
        r.register(Box::new(m.ready.clone()))?;
        r.register(Box::new(m.backup_last_success.clone()))?;
        r.register(Box::new(m.devices_needing_review.clone()))?;
        r.register(Box::new(m.renewals.clone()))?;
        for outcome in crate::pki::renew::OUTCOMES {
            m.renewals.with_label_values(&[outcome]);
        }
        r.register(Box::new(m.renewal_overdue.clone()))?;
        // process_* (CPU, memory, open files, start time), unprefixed as is conventional.
        m.process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = encoder.encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// A place in a budget (connections, or the pre-authentication budget), counted in a gauge
/// while it is held.
#[derive(Debug)]
pub struct Gauged<T> {
    _held: T,
    gauge: IntGauge,
}

impl<T> Gauged<T> {
    pub fn new(held: T, gauge: IntGauge) -> Self {
        gauge.inc();
        Self { _held: held, gauge }
    }
}

impl<T> Drop for Gauged<T> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
