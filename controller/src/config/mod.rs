//! Controller configuration: `config.toml` in the data dir, every field documented and
//! defaulted, unknown fields refused, and every problem reported at once before any port is
//! bound (exit code 64 from `main`).

use std::path::Path;

use serde::Deserialize;

mod backup;
mod broker;
mod sections;
pub use backup::{BackupConfig, BackupSchedule};
pub use broker::{ExternalBroker, MqttMode};
pub use sections::*;

use pifleet_io::toml_file;
/// Why the configuration was refused.
pub use pifleet_io::toml_file::ConfigError;

/// The whole controller configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub https: HttpsConfig,
    pub ingest: IngestConfig,
    pub telemetry: TelemetryConfig,
    pub enrollment: EnrollmentConfig,
    pub commands: CommandsConfig,
    pub approvals: ApprovalsConfig,
    pub releases: ReleasesConfig,
    pub rollouts: RolloutsConfig,
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
    pub pki: PkiConfig,
    pub store: StoreConfig,
    pub backup: BackupConfig,
}

impl Config {
    /// Reads and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&toml_file::read(path)?, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml_file::parse(text, path)?;
        toml_file::check(path, cfg.problems())?;
        Ok(cfg)
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                p.push(msg.to_owned());
            }
        };
        self.backup.problems(&mut check);
        self.mqtt.external.problems(self.mqtt.mode, &mut check);
        check(
            self.mqtt.public_host.as_deref().is_none_or(|h| {
                rustls::pki_types::ServerName::try_from(h).is_ok() && !h.contains('/')
            }),
            "mqtt.public_host must be a DNS name or an IP address",
        );
        check(
            self.mqtt.mode == MqttMode::Embedded || self.mqtt.public_port.is_some(),
            "mqtt.mode = \"external\" needs mqtt.public_port: the broker's port devices are told \
             at enrollment",
        );
        check(
            (100..=120_000).contains(&self.mqtt.handshake_timeout_ms),
            "mqtt.handshake_timeout_ms must be 100..=120000",
        );
        check(
            (100..=120_000).contains(&self.mqtt.connect_timeout_ms),
            "mqtt.connect_timeout_ms must be 100..=120000",
        );
        check(
            self.mqtt.max_connections >= 1,
            "mqtt.max_connections must be at least 1",
        );
        check(
            (1..=1_000_000).contains(&self.mqtt.listen_backlog),
            "mqtt.listen_backlog must be 1..=1000000",
        );
        check(
            self.mqtt.handshake_concurrency <= 1_024,
            "mqtt.handshake_concurrency must be 0..=1024 (0: one per core)",
        );
        check(
            (1..=100_000).contains(&self.mqtt.device_queue),
            "mqtt.device_queue must be 1..=100000",
        );
        check(
            (1..=86_400).contains(&self.mqtt.idle_max_s),
            "mqtt.idle_max_s must be 1..=86400",
        );
        check(
            (1..=1_000_000).contains(&self.mqtt.preauth_max),
            "mqtt.preauth_max must be 1..=1000000",
        );
        check(
            (1..=1_000_000).contains(&self.mqtt.preauth_per_source),
            "mqtt.preauth_per_source must be 1..=1000000",
        );
        check(
            (1..=100_000).contains(&self.mqtt.device_rate_per_s),
            "mqtt.device_rate_per_s must be 1..=100000",
        );
        check(
            (1..=100_000).contains(&self.mqtt.device_burst),
            "mqtt.device_burst must be 1..=100000",
        );
        check(
            (1..=86_400).contains(&self.pki.crl_check_s),
            "pki.crl_check_s must be 1..=86400",
        );
        check(
            (1..=7 * 86_400).contains(&self.pki.crl_refresh_s),
            "pki.crl_refresh_s must be 1..=604800",
        );
        check(
            (1..=365).contains(&self.pki.crl_next_update_days)
                && u64::from(self.pki.crl_next_update_days) * 86_400 > self.pki.crl_refresh_s,
            "pki.crl_next_update_days must be 1..=365 and longer than pki.crl_refresh_s",
        );
        check(
            self.pki
                .device_cert_lifetime_s
                .is_none_or(|s| (15..=3650 * 86_400).contains(&s)),
            "pki.device_cert_lifetime_s must be 15..=315360000",
        );
        check(
            (1..=30 * 86_400).contains(&self.pki.renew_min_interval_s)
                && std::time::Duration::from_secs(self.pki.renew_min_interval_s)
                    < self.pki.device_cert_lifetime(&self.enrollment) / 3,
            "pki.renew_min_interval_s must be 1..=2592000 and less than a third of the device \
             certificate lifetime",
        );
        check(
            (100..=600_000).contains(&self.store.busy_timeout_ms),
            "store.busy_timeout_ms must be 100..=600000",
        );
        check(
            (100..=3_600_000).contains(&self.store.retry_max_ms),
            "store.retry_max_ms must be 100..=3600000",
        );
        check(
            (1..=1_000).contains(&self.store.max_connections),
            "store.max_connections must be 1..=1000",
        );
        if let Some(url) = &self.store.url {
            check(
                sections::store_url_problem(url).is_none(),
                sections::store_url_problem(url).unwrap_or_default(),
            );
        }
        check(
            (50..=60_000).contains(&self.mqtt.crl_poll_ms),
            "mqtt.crl_poll_ms must be 50..=60000",
        );
        check(
            (100..=120_000).contains(&self.https.handshake_timeout_ms),
            "https.handshake_timeout_ms must be 100..=120000",
        );
        check(
            (1024..=16 * 1024 * 1024).contains(&self.https.max_body_bytes),
            "https.max_body_bytes must be 1024..=16777216",
        );
        check(
            (100..=600_000).contains(&self.https.header_timeout_ms),
            "https.header_timeout_ms must be 100..=600000",
        );
        check(
            (1..=1_000_000).contains(&self.https.max_connections),
            "https.max_connections must be 1..=1000000",
        );
        check(
            (1..=self.https.max_connections.max(1)).contains(&self.https.preauth_max),
            "https.preauth_max must be 1..=https.max_connections",
        );
        check(
            self.https.preauth_per_source >= 1
                && usize::try_from(self.https.preauth_per_source)
                    .is_ok_and(|n| n <= self.https.preauth_max),
            "https.preauth_per_source must be 1..=https.preauth_max",
        );
        check(
            (1..=50_000).contains(&self.ingest.batch_max_samples),
            "ingest.batch_max_samples must be 1..=50000",
        );
        check(
            self.ingest.batch_max_delay_ms <= 10_000,
            "ingest.batch_max_delay_ms must be at most 10000",
        );
        check(
            self.ingest.queue_capacity >= 16,
            "ingest.queue_capacity must be at least 16",
        );
        check(
            (1..=3650).contains(&self.telemetry.retention_days),
            "telemetry.retention_days must be 1..=3650",
        );
        check(
            self.telemetry.retention_interval_s >= 10,
            "telemetry.retention_interval_s must be at least 10",
        );
        check(
            (1..=3650).contains(&self.enrollment.device_cert_days),
            "enrollment.device_cert_days must be 1..=3650",
        );
        check(
            self.enrollment.max_token_ttl_s >= 60,
            "enrollment.max_token_ttl_s must be at least 60",
        );
        check(
            (1..=100_000).contains(&self.enrollment.rate_per_minute),
            "enrollment.rate_per_minute must be 1..=100000",
        );
        check(
            (1..=100_000).contains(&self.enrollment.rate_burst),
            "enrollment.rate_burst must be 1..=100000",
        );
        check(
            (1..=3_600).contains(&self.enrollment.refusal_audit_interval_s),
            "enrollment.refusal_audit_interval_s must be 1..=3600",
        );
        check(
            (1..=3_600).contains(&self.enrollment.pending_retry_s),
            "enrollment.pending_retry_s must be 1..=3600",
        );
        check(
            (1..=7 * 86_400).contains(&self.commands.default_ttl_s),
            "commands.default_ttl_s must be 1..=604800",
        );
        check(
            (1..=7 * 86_400).contains(&self.commands.answer_timeout_s),
            "commands.answer_timeout_s must be 1..=604800",
        );
        check(
            (10..=60_000).contains(&self.commands.poll_ms),
            "commands.poll_ms must be 10..=60000",
        );
        check(
            (100..=600_000).contains(&self.commands.resend_ms),
            "commands.resend_ms must be 100..=600000",
        );
        check(
            (1..=64 * 1024).contains(&self.releases.max_upload_mib),
            "releases.max_upload_mib must be 1..=65536",
        );
        check(
            (1..=256 * 1024).contains(&self.releases.max_unpacked_mib),
            "releases.max_unpacked_mib must be 1..=262144",
        );
        check(
            (1..=pifleet_shared::release::MAX_ENTRIES).contains(&self.releases.max_entries),
            "releases.max_entries must be 1..=100000",
        );
        check(
            (1..=86_400).contains(&self.releases.git_timeout_s),
            "releases.git_timeout_s must be 1..=86400",
        );
        check(
            (1..=86_400).contains(&self.releases.upload_timeout_s),
            "releases.upload_timeout_s must be 1..=86400",
        );
        check(
            (1..=3600).contains(&self.auth.key_reload_s),
            "auth.key_reload_s must be 1..=3600",
        );
        check(
            (1..=3_600_000).contains(&self.rollouts.poll_ms),
            "rollouts.poll_ms must be 1..=3600000",
        );
        check(
            self.rollouts.settle_ms <= 60_000,
            "rollouts.settle_ms must be 0..=60000",
        );
        check(
            (1..=30 * 86_400).contains(&self.approvals.expiry_s),
            "approvals.expiry_s must be 1..=2592000",
        );
        check(
            (1..=600).contains(&self.https.request_timeout_s),
            "https.request_timeout_s must be 1..=600",
        );
        check(
            self.https.cors_origins.iter().all(|o| {
                (o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && axum::http::HeaderValue::from_str(o).is_ok()
            }),
            "https.cors_origins must be origins like \"https://admin.example.com\" (scheme and host, no path)",
        );
        check(
            (5..=86_400).contains(&self.metrics.stale_after_s),
            "metrics.stale_after_s must be 5..=86400",
        );
        check(
            (60..=86_400).contains(&self.auth.access_ttl_s),
            "auth.access_ttl_s must be 60..=86400",
        );
        check(
            (300..=365 * 86_400).contains(&self.auth.refresh_ttl_s),
            "auth.refresh_ttl_s must be 300..=31536000",
        );
        check(
            (1..=100).contains(&self.auth.lockout_failures),
            "auth.lockout_failures must be 1..=100",
        );
        check(
            (1..=86_400).contains(&self.auth.lockout_window_s),
            "auth.lockout_window_s must be 1..=86400",
        );
        check(
            (1..=100_000).contains(&self.auth.rate_per_minute),
            "auth.rate_per_minute must be 1..=100000",
        );
        check(
            (1..=100_000).contains(&self.auth.rate_burst),
            "auth.rate_burst must be 1..=100000",
        );
        check(
            (8..=4 * 1024 * 1024).contains(&self.auth.argon2_memory_kib),
            "auth.argon2_memory_kib must be 8..=4194304",
        );
        check(
            (1..=64).contains(&self.auth.argon2_iterations),
            "auth.argon2_iterations must be 1..=64",
        );
        check(
            (1..=64).contains(&self.auth.argon2_parallelism),
            "auth.argon2_parallelism must be 1..=64",
        );
        check(
            self.auth
                .argon2_concurrency
                .is_none_or(|n| (1..=1024).contains(&n)),
            "auth.argon2_concurrency must be 1..=1024",
        );
        check(
            self.auth.argon2_queue <= 100_000,
            "auth.argon2_queue must be 0..=100000",
        );
        p.extend(self.tracing.problems());
        p
    }
}

/// The documented default configuration written by `init`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[cfg(test)]
mod tests;
