//! The sections of `config.toml`, one type each, with their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

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
    /// Lifetime of device certificates, in seconds; unset: `enrollment.device_cert_days`.
    /// Devices renew theirs when a third of it remains.
    pub device_cert_lifetime_s: Option<u64>,
    /// A device gets at most one certificate per this many seconds (renewal rate limit).
    pub renew_min_interval_s: u64,
}

impl PkiConfig {
    /// The lifetime of a new device certificate, from this section or `enrollment`.
    pub fn device_cert_lifetime(&self, enrollment: &EnrollmentConfig) -> Duration {
        Duration::from_secs(
            self.device_cert_lifetime_s
                .unwrap_or(u64::from(enrollment.device_cert_days) * 86_400),
        )
    }
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            crl_check_s: 5,
            crl_refresh_s: 86_400,
            crl_next_update_days: 7,
            device_cert_lifetime_s: None,
            renew_min_interval_s: 3_600,
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
    /// A PostgreSQL database (`postgres://user@host:port/db`) instead of the data dir's
    /// SQLite file: the scale-out mode (docs/SCALING.md). Never with a password in it.
    pub url: Option<String>,
    /// The file holding the PostgreSQL password (one line); else `PIFLEET_STORE_PASSWORD`
    /// from the environment, else none (peer or certificate authentication).
    pub password_file: Option<std::path::PathBuf>,
    /// Connections to PostgreSQL this controller keeps at most.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            busy_timeout_ms: 10_000,
            retry_max_ms: 30_000,
            url: None,
            password_file: None,
            max_connections: 16,
        }
    }
}

/// What is wrong with a `store.url`, if anything: it must be a PostgreSQL URL, and a
/// password must not be in it (the configuration file is not a secret store).
pub fn store_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Some("store.url must start with postgres:// (PostgreSQL is the only other store)");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let user_info = authority
        .rsplit_once('@')
        .map(|(u, _)| u)
        .unwrap_or_default();
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or_default();
    if user_info.contains(':') || query.split('&').any(|kv| kv.starts_with("password=")) {
        return Some(
            "store.url must not carry a password: put it in store.password_file or \
             PIFLEET_STORE_PASSWORD",
        );
    }
    None
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
    pub(super) fn problems(&self) -> Vec<String> {
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
    /// The running controller re-reads `jwt.key`, the server certificate, the command keys
    /// and the release keys this often (after `rotate …`).
    pub key_reload_s: u64,
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
            key_reload_s: 10,
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

/// Application releases: what an upload or a git commit may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    /// Largest upload (the compressed archive), in MiB.
    pub max_upload_mib: u64,
    /// Most a release may unpack to, in MiB; counted while decompressing.
    pub max_unpacked_mib: u64,
    /// Most entries (files, folders, links) in a release.
    pub max_entries: usize,
    /// A git fetch and archive must finish within this many seconds.
    pub git_timeout_s: u64,
    /// Accept `file://` git URLs: repositories on the controller host, readable by its user.
    pub git_allow_file_urls: bool,
    /// An upload (and making its release) must finish within this many seconds.
    pub upload_timeout_s: u64,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        Self {
            max_upload_mib: 512,
            max_unpacked_mib: 1024,
            max_entries: pifleet_shared::release::MAX_ENTRIES,
            git_timeout_s: 600,
            git_allow_file_urls: false,
            upload_timeout_s: 3_600,
        }
    }
}

/// Two-person approval of fleet-wide actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// A command to more devices than this waits for a second admin's approval.
    pub device_threshold: u32,
    /// A selector that matches every device of the fleet (of two or more) needs approval
    /// whatever its size.
    pub whole_fleet: bool,
    /// A request not decided within this many seconds expires.
    pub expiry_s: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            device_threshold: 10,
            whole_fleet: true,
            expiry_s: 86_400,
        }
    }
}

/// The rollout runner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutsConfig {
    /// Running rollouts are looked at this often even when nothing reports (deadlines and
    /// bake times also wake the runner on time; this catches work done by other processes,
    /// such as the command line).
    pub poll_ms: u64,
    /// After a device reports, wait this long for more reports before deciding, so a burst
    /// of progress is decided once.
    pub settle_ms: u64,
}

impl Default for RolloutsConfig {
    fn default() -> Self {
        Self {
            poll_ms: 5_000,
            settle_ms: 200,
        }
    }
}

impl RolloutsConfig {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }
}

impl ApprovalsConfig {
    pub fn expiry(&self) -> Duration {
        Duration::from_secs(self.expiry_s)
    }
}

/// The device-facing MQTT gateway (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Devices connect to the built-in gateway (embedded) or to an external broker.
    pub mode: super::broker::MqttMode,
    /// The external broker, for `mode = "external"`.
    pub external: super::broker::ExternalBroker,
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Port devices are told to connect to at enrollment (defaults to the listen port).
    pub public_port: Option<u16>,
    /// Host (DNS name or IP address) devices are told to connect to at enrollment, when it
    /// is not the one they enroll with (an external broker on a host of its own); unset:
    /// the enrollment host.
    pub public_host: Option<String>,
    /// Longest time a client may take to finish the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Longest time between the handshake and the MQTT CONNECT packet.
    pub connect_timeout_ms: u64,
    /// Most concurrent device connections; more are refused at accept, before TLS. Lowered
    /// at start to what the process's open-file limit leaves after the HTTPS listener's
    /// share and a reserve (the metric `pifleet_mqtt_connection_limit` shows the result).
    pub max_connections: usize,
    /// Length of the kernel's queue of connections not yet accepted (capped by
    /// `net.core.somaxconn`): a reconnecting fleet waits there while handshakes run.
    pub listen_backlog: u32,
    /// TLS handshakes computing at once (0: one per core). Waiting for a client's bytes
    /// does not count.
    pub handshake_concurrency: usize,
    /// Messages waiting to go to one device; a device that lets this many pile up is not
    /// reading its socket and is disconnected.
    pub device_queue: usize,
    /// Longest silence accepted from a device, whatever keep-alive it asks for (otherwise
    /// one and a half keep-alive periods).
    pub idle_max_s: u64,
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
    /// Validity of device certificates in days (`pki.device_cert_lifetime_s`, when set,
    /// replaces it).
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
    /// A device waiting for approval (a token with `require_approval`) is told to ask again
    /// after this many seconds.
    pub pending_retry_s: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            mode: super::broker::MqttMode::Embedded,
            external: super::broker::ExternalBroker::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            public_port: None,
            public_host: None,
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 10_000,
            max_connections: 60_000,
            listen_backlog: 4_096,
            handshake_concurrency: 0,
            device_queue: 64,
            idle_max_s: 600,
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
            pending_retry_s: 30,
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
    /// Handshakes computing at once: as configured, or one per core.
    pub fn handshake_concurrency(&self) -> usize {
        match self.handshake_concurrency {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        }
    }
}
