//! Controller configuration: `config.toml` in the data dir, every field documented and
//! defaulted, unknown fields refused, and every problem reported at once before any port is
//! bound (exit code 64 from `main`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: invalid configuration:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

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
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
    pub pki: PkiConfig,
    pub store: StoreConfig,
}

/// The certificate revocation list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// How often the running controller compares the database's revoked certificates with
    /// the gateway's, enforcing and publishing any the CRL misses.
    pub crl_check_s: u64,
    /// The CRL is published anew at least this often, so it never reaches its nextUpdate.
    pub crl_refresh_s: u64,
    /// nextUpdate of a published CRL, in days from its publication.
    pub crl_next_update_days: u32,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            crl_check_s: 5,
            crl_refresh_s: 86_400,
            crl_next_update_days: 7,
        }
    }
}

/// The database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How long a write waits for another process (the command line) to release the write
    /// lock before it fails.
    pub busy_timeout_ms: u64,
    /// Longest pause between retries of a database write that keeps failing (a locked or
    /// full disk); meanwhile the controller reports itself not ready.
    pub retry_max_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            busy_timeout_ms: 10_000,
            retry_max_ms: 30_000,
        }
    }
}

impl StoreConfig {
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
}

/// Trace export over OTLP (needs a controller built with the `otel` feature).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/HTTP (protobuf) collector endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    /// Empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "pifleet-controller".to_owned(),
        }
    }
}

impl TracingConfig {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=255).contains(&self.service_name.len()) {
            p.push("tracing.service_name must be 1..=255 bytes".to_owned());
        }
        if self.otlp_endpoint.is_empty() {
            return p;
        }
        if !cfg!(feature = "otel") {
            p.push(
                "tracing.otlp_endpoint is set, but this controller was built without trace \
                 export: rebuild it with `--features otel`, or leave otlp_endpoint empty"
                    .to_owned(),
            );
        }
        let uri = self.otlp_endpoint.parse::<axum::http::Uri>().ok();
        let ok = uri.as_ref().is_some_and(|u| {
            u.scheme_str() == Some("http")
                && u.authority().is_some_and(|a| !a.as_str().contains('@'))
        });
        if !ok {
            p.push(
                "tracing.otlp_endpoint must be a plain http:// URL of an OTLP/HTTP collector, \
                 like \"http://127.0.0.1:4318/v1/traces\" (no https, no user info)"
                    .to_owned(),
            );
        }
        p
    }
}

/// Prometheus endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Client networks (CIDRs) that may scrape without the scrape token. Empty: none.
    pub scrape_allow: Vec<ipnet::IpNet>,
    /// A device whose newest sample is older than this is served as stale (`up` 0, no
    /// values).
    pub stale_after_s: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            scrape_allow: Vec::new(),
            stale_after_s: 120,
        }
    }
}

/// Admin sign-in: sessions, brute-force limits and password hashing cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of an access token (JWT), in seconds.
    pub access_ttl_s: i64,
    /// Lifetime of a session (its refresh token family), in seconds.
    pub refresh_ttl_s: i64,
    /// Failed sign-ins (wrong password or MFA code) that lock an account ...
    pub lockout_failures: u32,
    /// ... within this window; the lock lasts until the oldest failure leaves the window.
    pub lockout_window_s: i64,
    /// Sign-in requests (login and its MFA step) per minute from one source (an IPv4
    /// address or an IPv6 /64) ...
    pub rate_per_minute: u32,
    /// ... with bursts up to this many.
    pub rate_burst: u32,
    /// Argon2id cost for new password hashes (existing hashes keep theirs until the next
    /// sign-in re-hashes them).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Argon2 runs (password checks and hashes) at the same time; each holds
    /// `argon2_memory_kib` of memory while it runs. Unset: the number of CPUs.
    pub argon2_concurrency: Option<u32>,
    /// Requests that may wait for an argon2 run; with this many waiting, sign-ins and
    /// password changes are refused at once (HTTP 503 with Retry-After) instead of queueing.
    pub argon2_queue: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_ttl_s: 900,
            refresh_ttl_s: 30 * 86_400,
            lockout_failures: 5,
            lockout_window_s: 900,
            rate_per_minute: 30,
            rate_burst: 10,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            argon2_concurrency: None,
            argon2_queue: 32,
        }
    }
}

impl AuthConfig {
    pub fn argon2_cost(&self) -> crate::auth::password::Argon2Cost {
        crate::auth::password::Argon2Cost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// Argon2 runs allowed at once: `argon2_concurrency`, or the number of CPUs.
    pub fn argon2_concurrency(&self) -> usize {
        match self.argon2_concurrency {
            Some(n) => usize::try_from(n).unwrap_or(1),
            None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        }
    }
}

/// Remote commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Lifetime of a command when none is given; a command for an offline device waits
    /// this long for it to come back.
    pub default_ttl_s: u64,
    /// A sent command with no final result after this long is marked failed.
    pub answer_timeout_s: u64,
    /// How often queued commands (e.g. from the CLI) and expiries are checked.
    pub poll_ms: u64,
    /// A sent command the device has not acknowledged is sent again after this long.
    pub resend_ms: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            default_ttl_s: 3_600,
            answer_timeout_s: 300,
            poll_ms: 200,
            resend_ms: 2_000,
        }
    }
}

impl CommandsConfig {
    pub fn answer_timeout(&self) -> Duration {
        Duration::from_secs(self.answer_timeout_s)
    }
}

/// The device-facing MQTT gateway (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Port devices are told to connect to at enrollment (defaults to the listen port).
    pub public_port: Option<u16>,
    /// Longest time a client may take to finish the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Longest time between the handshake and the MQTT CONNECT packet.
    pub connect_timeout_ms: u64,
    /// Most concurrent device connections; more are refused at accept.
    pub max_connections: usize,
    /// Most connections that have not finished authenticating (TLS handshake and CONNECT)
    /// at once; while that many are pending, new ones wait in the listen backlog.
    pub preauth_max: usize,
    /// Most unauthenticated connections from one source address (IPv6: one /64); more are
    /// closed at accept. Generous: a site of Pis behind one NAT address reconnects at once.
    pub preauth_per_source: u32,
    /// Messages (PUBLISH, SUBSCRIBE, UNSUBSCRIBE) per second one device may send ...
    pub device_rate_per_s: u32,
    /// ... with bursts up to this many; over budget, the device is read more slowly.
    pub device_burst: u32,
    /// How often the CRL file is checked for changes.
    pub crl_poll_ms: u64,
}

/// The HTTPS listener (enrollment now; the admin API later).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsConfig {
    pub listen: SocketAddr,
    /// Longest time a client may take to finish the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A request must be answered within this time (408 otherwise).
    pub request_timeout_s: u64,
    /// Client networks allowed to use the admin API (CIDRs). Empty: any. Device enrollment
    /// and /healthz are not affected.
    pub admin_allow: Vec<ipnet::IpNet>,
    /// Reverse proxies whose X-Forwarded-For is believed (CIDRs). Empty: the header is ignored
    /// and the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins allowed to call the API from a browser on another origin (CORS). Empty: none.
    pub cors_origins: Vec<String>,
    /// A client must send each request head within this time after connecting or after
    /// its previous answer (idle keep-alive connections are closed after it).
    pub header_timeout_ms: u64,
    /// Connections that have not sent their first request head yet (TLS handshake
    /// included), in total; when all are taken new connections wait in the listen backlog.
    pub preauth_max: usize,
    /// ... and from one source (an IPv4 address, an IPv6 /64); more are closed at once.
    pub preauth_per_source: u32,
    /// Most open connections in total; more are closed at accept.
    pub max_connections: usize,
}

/// The SQLite writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most samples committed in one transaction.
    pub batch_max_samples: usize,
    /// Longest a sample waits for its batch to fill before the commit.
    pub batch_max_delay_ms: u64,
    /// Capacity of the queue between the broker and the writer, in messages.
    pub queue_capacity: usize,
}

/// Telemetry history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Samples older than this many days are deleted.
    pub retention_days: u32,
    /// How often retention runs, in seconds.
    pub retention_interval_s: u64,
}

/// Device enrollment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// Validity of device certificates in days.
    pub device_cert_days: u32,
    /// Longest lifetime of an enrollment token, in seconds.
    pub max_token_ttl_s: u64,
    /// Enrollment requests per minute from one source (an IPv4 address or an IPv6 /64) ...
    pub rate_per_minute: u32,
    /// ... with bursts up to this many (a site behind one NAT may enroll many Pis at once).
    pub rate_burst: u32,
    /// Refused enrollments are counted per source and audited as one entry per source this
    /// often (and at shutdown), in seconds.
    pub refusal_audit_interval_s: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            public_port: None,
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 10_000,
            max_connections: 60_000,
            preauth_max: 2_048,
            preauth_per_source: 512,
            device_rate_per_s: 50,
            device_burst: 200,
            crl_poll_ms: 250,
        }
    }
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            handshake_timeout_ms: 5_000,
            max_body_bytes: 64 * 1024,
            request_timeout_s: 30,
            admin_allow: Vec::new(),
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            header_timeout_ms: 10_000,
            preauth_max: 512,
            preauth_per_source: 128,
            max_connections: 4_096,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_max_samples: 2_000,
            batch_max_delay_ms: 20,
            queue_capacity: 50_000,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            retention_interval_s: 3_600,
        }
    }
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            device_cert_days: 365,
            max_token_ttl_s: 30 * 24 * 3_600,
            rate_per_minute: 300,
            rate_burst: 100,
            refusal_audit_interval_s: 60,
        }
    }
}

impl MqttConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl Config {
    /// Reads and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                p.push(msg.to_owned());
            }
        };
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
            (100..=600_000).contains(&self.store.busy_timeout_ms),
            "store.busy_timeout_ms must be 100..=600000",
        );
        check(
            (100..=3_600_000).contains(&self.store.retry_max_ms),
            "store.retry_max_ms must be 100..=3600000",
        );
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
pub const DEFAULT_TOML: &str = r#"# pifleet controller configuration. Every field is optional; the values shown are the
# defaults. Unknown fields are refused.

[mqtt]
# Address of the device-facing MQTT gateway (mutual TLS, MQTT 3.1.1).
listen = "0.0.0.0:8883"
# Port devices are told to use at enrollment, when a proxy or NAT changes it.
# public_port = 8883
# A client must finish the TLS handshake within this time.
handshake_timeout_ms = 5000
# ... and send its MQTT CONNECT within this time after the handshake.
connect_timeout_ms = 10000
# Most concurrent device connections.
max_connections = 60000
# Connections that have not finished authenticating (TLS handshake and CONNECT): at most
# this many at once (more wait in the listen backlog) ...
preauth_max = 2048
# ... and at most this many from one source address (IPv6: one /64); more are closed.
# Generous, because a whole site of Pis behind one NAT address reconnects at once.
preauth_per_source = 512
# Messages (PUBLISH, SUBSCRIBE, UNSUBSCRIBE) per second one device may send, and its burst.
# A device over its budget is read more slowly (nothing is dropped) and counted in
# pifleet_mqtt_throttled_total.
device_rate_per_s = 50
device_burst = 200
# How often the CRL file is checked; a revoked device is dropped within this time.
crl_poll_ms = 250

[https]
# Address of the HTTPS listener (enrollment; admin API).
listen = "0.0.0.0:8443"
# A client must finish the TLS handshake within this time ...
handshake_timeout_ms = 5000
# ... and send each request head within this time after connecting or after its previous
# answer (idle keep-alive connections are closed after it).
header_timeout_ms = 10000
max_body_bytes = 65536
# A request must be answered within this time.
request_timeout_s = 30
# Connections that have not sent their first request yet (TLS handshake included), in
# total: when all are taken, new connections wait in the kernel's listen backlog ...
preauth_max = 512
# ... and from one source (an IPv4 address, an IPv6 /64): more are closed at once, logged
# ("https connection refused", with `source`) and counted. Generous: an office or a site of
# Pis may share one NAT address.
preauth_per_source = 128
# Most open connections in total; more are closed at accept.
max_connections = 4096
# Client networks (CIDRs) allowed to use the admin API and dashboard; empty allows any.
# Device enrollment is not affected. Example: ["10.0.0.0/8", "192.168.1.0/24"]
admin_allow = []
# Reverse proxies (CIDRs) whose X-Forwarded-For header is believed; empty ignores it.
trusted_proxies = []
# Other origins allowed to call the API from a browser (CORS); empty allows none.
cors_origins = []

[ingest]
# Most samples per SQLite transaction (group commit).
batch_max_samples = 2000
# Longest a sample waits for its batch before the commit.
batch_max_delay_ms = 20
# Queue between the broker and the database writer, in messages.
queue_capacity = 50000

[telemetry]
# Telemetry history older than this is deleted.
retention_days = 30
retention_interval_s = 3600

[enrollment]
# Validity of device certificates.
device_cert_days = 365
# Longest lifetime an enrollment token may be given.
max_token_ttl_s = 2592000
# Per source (an IPv4 address, or an IPv6 /64) on /api/v1/enroll: sustained requests per
# minute, and burst (HTTP 429). Generous: a site behind one NAT may enroll many Pis at once,
# and `pifleet-agent enroll` waits out a 429's Retry-After and tries again.
rate_per_minute = 300
rate_burst = 100
# Refused enrollments are logged one line each (with `source`, for fail2ban), but audited
# as one entry per source with the counts per reason, this often (seconds) and at shutdown.
refusal_audit_interval_s = 60

[commands]
# Lifetime of a command when none is given (at most 7 days). A command for an offline
# device waits this long for it to come back; then it expires and never runs.
default_ttl_s = 3600
# A sent command with no final result after this long is marked failed.
answer_timeout_s = 300
# How often queued commands (e.g. created with the CLI) and expiries are checked.
poll_ms = 200
# A sent command the device has not acknowledged is sent again after this long (the
# device's journal makes a re-delivery harmless).
resend_ms = 2000

[auth]
# Access tokens (JWT) live this long; the dashboard refreshes them silently.
access_ttl_s = 900
# A sign-in session (refresh token family) lives this long.
refresh_ttl_s = 2592000
# This many failed sign-ins (password or MFA code, or a wrong current password on a
# password change) within the window lock the account (HTTP 423) until the oldest failure
# leaves the window. Unknown user names behave the same. Each attempt is recorded as a
# failure before its password or code is checked (and removed if it was right), so at most
# this many guesses are checked per window however many arrive at once, also across
# controller processes sharing the database.
lockout_failures = 5
lockout_window_s = 900
# Per source (an IPv4 address, or an IPv6 /64) on sign-in (/api/v1/auth/login, /login/mfa):
# sustained requests per minute, and burst (HTTP 429).
rate_per_minute = 30
rate_burst = 10
# Argon2id cost of new password hashes; raising it re-hashes each password at its next
# sign-in.
argon2_memory_kib = 19456
argon2_iterations = 2
argon2_parallelism = 1
# Argon2 runs (password checks and hashes) at the same time, each holding argon2_memory_kib
# of memory while it runs: memory for sign-ins stays below argon2_concurrency x that.
# Default: the number of CPUs (more would not finish sooner).
# argon2_concurrency = 4
# Requests that may wait for an argon2 run. With this many waiting, sign-ins and password
# changes are refused at once with HTTP 503 and Retry-After (without counting toward the
# lockout) instead of queueing without bound.
argon2_queue = 32

[metrics]
# Prometheus scrapes /metrics, /metrics/devices/<id> and /api/v1/prometheus/sd with the
# token in scrape.token (Authorization: Bearer). Networks listed here may scrape without it.
scrape_allow = []
# A device whose newest sample is older than this is served as stale (up 0, no values).
stale_after_s = 120

[pki]
# How often the database's revoked certificates are compared with the gateway's; any the
# CRL misses (its last rewrite failed, say) are enforced at once and the CRL is rewritten.
crl_check_s = 5
# The CRL is rewritten at least this often, so it never passes its nextUpdate (brokers
# built on OpenSSL refuse an expired CRL).
crl_refresh_s = 86400
crl_next_update_days = 7

[store]
# A write waits this long for another process (the command line) holding the write lock.
busy_timeout_ms = 10000
# While database writes keep failing (a locked or full disk) they are retried, at most this
# far apart, and /readyz answers 503.
retry_max_ms = 30000

[tracing]
# Export traces over OTLP/HTTP (protobuf) to this collector endpoint, e.g.
# "http://127.0.0.1:4318/v1/traces". Empty: off. Needs a controller built with --features otel.
otlp_endpoint = ""
service_name = "pifleet-controller"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_to_defaults() {
        let cfg = Config::parse(DEFAULT_TOML, Path::new("t")).unwrap();
        let def = Config::default();
        assert_eq!(cfg.mqtt.listen, def.mqtt.listen);
        assert_eq!(cfg.https.listen, def.https.listen);
        assert_eq!(cfg.ingest.batch_max_samples, def.ingest.batch_max_samples);
        assert_eq!(cfg.telemetry.retention_days, def.telemetry.retention_days);
        assert_eq!(
            cfg.enrollment.max_token_ttl_s,
            def.enrollment.max_token_ttl_s
        );
        assert_eq!(cfg.auth.argon2_queue, def.auth.argon2_queue);
        assert_eq!(cfg.auth.argon2_concurrency, None);
        assert!(cfg.auth.argon2_concurrency() >= 1);
        let h = (&cfg.https, &def.https);
        assert_eq!(
            (
                h.0.header_timeout_ms,
                h.0.preauth_max,
                h.0.preauth_per_source,
                h.0.max_connections
            ),
            (
                h.1.header_timeout_ms,
                h.1.preauth_max,
                h.1.preauth_per_source,
                h.1.max_connections
            )
        );
        let e = (&cfg.enrollment, &def.enrollment);
        assert_eq!(
            (
                e.0.rate_per_minute,
                e.0.rate_burst,
                e.0.refusal_audit_interval_s
            ),
            (
                e.1.rate_per_minute,
                e.1.rate_burst,
                e.1.refusal_audit_interval_s
            )
        );
        assert_eq!(
            (cfg.auth.rate_per_minute, cfg.auth.rate_burst),
            (def.auth.rate_per_minute, def.auth.rate_burst)
        );
    }

    #[test]
    fn throttling_settings_are_range_checked() {
        let text =
            "[enrollment]\nrate_per_minute = 0\nrate_burst = 0\nrefusal_audit_interval_s = 0\n";
        let err = Config::parse(text, Path::new("t")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        let ok =
            "[enrollment]\nrate_per_minute = 1\nrate_burst = 1\nrefusal_audit_interval_s = 1\n";
        assert!(Config::parse(ok, Path::new("t")).is_ok());
        let budgets = |max: usize, preauth: usize, per_source: u32| {
            let text = format!(
                "[https]\nmax_connections = {max}\npreauth_max = {preauth}\n\
                 preauth_per_source = {per_source}\n"
            );
            match Config::parse(&text, Path::new("t")) {
                Ok(_) => 0,
                Err(ConfigError::Invalid { problems, .. }) => problems.len(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(budgets(4096, 512, 128), 0);
        assert_eq!(budgets(1, 1, 1), 0);
        assert_eq!(budgets(100, 200, 1), 1, "a pre-auth budget over the total");
        assert_eq!(budgets(100, 50, 51), 1, "a share over the pre-auth budget");
        assert_eq!(budgets(100, 50, 0), 1);
        assert_eq!(budgets(0, 0, 0), 3);
        assert!(Config::parse("[https]\nheader_timeout_ms = 50\n", Path::new("t")).is_err());
    }

    #[test]
    fn argon2_bounds_checked() {
        let ok = Config::parse(
            "[auth]\nargon2_concurrency = 1\nargon2_queue = 0\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!((ok.auth.argon2_concurrency(), ok.auth.argon2_queue), (1, 0));
        let err = Config::parse(
            "[auth]\nargon2_concurrency = 0\nargon2_queue = 100001\n",
            Path::new("t"),
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn unknown_field_refused() {
        let err = Config::parse("[mqtt]\nlisten_port = 1\n", Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn all_problems_reported_at_once() {
        let text = "[mqtt]\nhandshake_timeout_ms = 1\n[telemetry]\nretention_days = 0\n[ingest]\nbatch_max_samples = 0\n";
        let err = Config::parse(text, Path::new("t")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn otlp_endpoint_refused_without_the_feature() {
        let text = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
        let err = Config::parse(text, Path::new("t")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("--features otel"), "{problems:?}");
    }

    #[test]
    fn otlp_endpoint_checked() {
        for bad in [
            "https://collector:4318/v1/traces",
            "http://u:p@collector:4318/v1/traces",
            "127.0.0.1:4318",
            "not a url",
        ] {
            let text = format!("[tracing]\notlp_endpoint = {bad:?}\n");
            let err = Config::parse(&text, Path::new("t")).unwrap_err();
            assert!(err.to_string().contains("plain http://"), "{bad}: {err}");
        }
        let text = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
        assert_eq!(
            Config::parse(text, Path::new("t")).is_ok(),
            cfg!(feature = "otel")
        );
        assert!(Config::parse("[tracing]\nservice_name = \"\"\n", Path::new("t")).is_err());
    }
}
