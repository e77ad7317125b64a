//! The agent's `agent.toml`: written by `enroll`, read by `run`. Unknown fields are refused
//! and every problem is reported at once. Relative paths are relative to the file's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pifleet_io::toml_file;
use pifleet_shared::DeviceId;
use serde::{Deserialize, Serialize};

use crate::apps::AppConfig;
use crate::commands::CommandsConfig;
use crate::watchdog::WatchdogSection;

/// Configuration errors (exit code 64).
pub use pifleet_io::toml_file::ConfigError;

/// The whole agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id; must equal the CN of its certificate.
    pub device_id: DeviceId,
    pub controller: ControllerConfig,
    pub tls: TlsFiles,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default)]
    pub mqtt: MqttSection,
    /// Which signed remote commands this device accepts (default: ping only).
    #[serde(default)]
    pub commands: CommandsConfig,
    /// The optional local Prometheus listener; off when the section is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSection>,
    /// The apps this device may deploy, by name (`[apps.NAME]`); none by default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, AppConfig>,
    /// The service watchdog and the guard window after a deploy (on by default). Not
    /// written by `enroll`: its defaults apply until an administrator adds the section.
    #[serde(default, skip_serializing)]
    pub watchdog: WatchdogSection,
}

/// Where the controller is.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerConfig {
    /// HTTPS URL used at enrollment (and later for renewals and artifacts).
    pub url: String,
    /// MQTT gateway host name (must match the controller's server certificate).
    pub mqtt_host: String,
    pub mqtt_port: u16,
}

/// Identity files written at enrollment (0600).
#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The controller's Ed25519 command-signing public key.
    pub command_key: PathBuf,
    /// PEM files of the release keys (Ed25519 public keys) that release manifests must be
    /// signed with; every "PUBLIC KEY" block of every file is trusted. The first file is
    /// the controller's to manage: `enroll` writes it, and a signed `TrustReleaseKeys`
    /// command replaces its content (atomically, durably); it may be missing until then.
    /// Further files are the administrator's (a key kept offline, say) and must exist.
    /// Default `["release-keys.pem"]`, so devices enrolled before releases need no edit.
    pub release_keys: Vec<PathBuf>,
}

/// Read by [`crate::sections`], which requires every field but `release_keys`.
impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            command_key: PathBuf::new(),
            release_keys: vec![PathBuf::from("release-keys.pem")],
        }
    }
}

/// Read by [`crate::sections`], which requires every field.
impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            mqtt_host: String::new(),
            mqtt_port: 0,
        }
    }
}

/// Telemetry settings.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// Seconds between samples.
    pub interval_s: u32,
    /// A file holding the temperature to report in millidegrees Celsius (the sysfs thermal
    /// format), instead of the SoC's thermal zone: for boards whose sensor is elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_file: Option<PathBuf>,
}

/// On-disk spool of unacknowledged samples.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolSection {
    pub dir: PathBuf,
    /// Cap on the spool's size; the oldest samples are dropped (and reported) beyond it.
    pub max_bytes: u64,
    /// Seconds between fsyncs (fewer writes spare SD cards).
    pub sync_interval_s: u64,
}

/// MQTT connection settings.
#[derive(Debug, Clone, Serialize)]
pub struct MqttSection {
    pub keep_alive_s: u64,
    /// Cap of the reconnect backoff, in seconds.
    pub backoff_max_s: u64,
    /// Certificate renewal (over this link, when a third of the lifetime remains): how often
    /// the certificate is looked at, in seconds (each wait jittered by up to a tenth) ...
    pub renew_check_s: u64,
    /// ... how long the controller's answer is waited for before asking again ...
    pub renew_answer_timeout_s: u64,
    /// ... and the cap of the backoff between failed attempts.
    pub renew_backoff_max_s: u64,
}

/// `[metrics]`: serve the latest sample at `http://<listen>/metrics` for a Prometheus on
/// the LAN (see [`crate::metrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Socket address to listen on, e.g. "0.0.0.0:9101".
    pub listen: SocketAddr,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_s: 10,
            temperature_file: None,
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            max_bytes: 16 * 1024 * 1024,
            sync_interval_s: 30,
        }
    }
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            keep_alive_s: 30,
            backoff_max_s: 60,
            renew_check_s: 3_600,
            renew_answer_timeout_s: 60,
            renew_backoff_max_s: 3_600,
        }
    }
}

impl AgentConfig {
    /// Reads and validates the file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = toml_file::parse(&toml_file::read(path)?, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.command_key,
            &mut cfg.spool.dir,
            &mut cfg.commands.state_dir,
        ]
        .into_iter()
        .chain(cfg.tls.release_keys.iter_mut())
        .chain(cfg.telemetry.temperature_file.as_mut())
        .chain(cfg.apps.values_mut().filter_map(|a| a.dir.as_mut()))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        toml_file::check(path, cfg.problems())?;
        Ok(cfg)
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=86_400).contains(&self.telemetry.interval_s) {
            p.push("telemetry.interval_s must be 1..=86400".to_owned());
        }
        if self.spool.max_bytes < 64 * 1024 {
            p.push("spool.max_bytes must be at least 65536".to_owned());
        }
        if !(1..=3_600).contains(&self.spool.sync_interval_s) {
            p.push("spool.sync_interval_s must be 1..=3600".to_owned());
        }
        if !(5..=3_600).contains(&self.mqtt.keep_alive_s) {
            p.push("mqtt.keep_alive_s must be 5..=3600".to_owned());
        }
        if !(1..=3_600).contains(&self.mqtt.backoff_max_s) {
            p.push("mqtt.backoff_max_s must be 1..=3600".to_owned());
        }
        if self.controller.mqtt_host.is_empty() {
            p.push("controller.mqtt_host must not be empty".to_owned());
        }
        if self.controller.mqtt_port == 0 {
            p.push("controller.mqtt_port must not be 0".to_owned());
        }
        if self.metrics.as_ref().is_some_and(|m| m.listen.port() == 0) {
            p.push("metrics.listen needs a port other than 0".to_owned());
        }
        let m = &self.mqtt;
        if ![
            m.renew_check_s,
            m.renew_answer_timeout_s,
            m.renew_backoff_max_s,
        ]
        .iter()
        .all(|s| (1..=86_400).contains(s))
        {
            p.push("mqtt.renew_*_s must be 1..=86400".to_owned());
        }
        p.extend(self.commands.problems());
        p.extend(crate::apps::config::problems(&self.apps));
        p.extend(self.watchdog.problems());
        p
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.telemetry.interval_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
device_id = "pi-01"
[controller]
url = "https://ctl:8443"
mqtt_host = "ctl"
mqtt_port = 8883
[tls]
ca = "ca.crt"
cert = "device.crt"
key = "device.key"
command_key = "command.pub"
"#;

    #[test]
    fn loads_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert_eq!(cfg.tls.key, dir.path().join("device.key"));
        // Configurations written before releases name no release keys: the default file.
        assert_eq!(cfg.tls.release_keys, [dir.path().join("release-keys.pem")]);
        assert_eq!(cfg.spool.dir, dir.path().join("spool"));
        assert_eq!(cfg.telemetry.interval_s, 10);
        assert_eq!(cfg.telemetry.temperature_file, None);
        let commands = CommandsConfig {
            state_dir: dir.path().join("commands"),
            ..CommandsConfig::default()
        };
        assert_eq!(cfg.commands, commands);
    }

    #[test]
    fn temperature_file_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let section = "[telemetry]\ninterval_s = 2\ntemperature_file = \"sensors/board\"\n";
        std::fs::write(&path, format!("{GOOD}{section}")).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert_eq!(
            cfg.telemetry.temperature_file,
            Some(dir.path().join("sensors/board"))
        );
        let back: AgentConfig = toml::from_str(&toml::to_string_pretty(&cfg).unwrap()).unwrap();
        assert_eq!(
            back.telemetry.temperature_file,
            cfg.telemetry.temperature_file
        );
    }

    #[test]
    fn commands_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let section = r#"
[commands]
reboot = true
services = ["kiosk.service"]
path = "/opt/fake/bin"
[commands.scripts.backup]
argv = ["/usr/local/bin/backup"]
allowed_args = ["--dry-run"]
"#;
        std::fs::write(&path, format!("{GOOD}{section}")).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert!(cfg.commands.reboot && cfg.commands.ping);
        assert_eq!(cfg.commands.path, "/opt/fake/bin");
        // `enroll` writes the whole configuration, [commands] included: it must read back.
        let written = toml::to_string_pretty(&cfg).unwrap();
        let back: AgentConfig = toml::from_str(&written).unwrap();
        assert_eq!(back.commands, cfg.commands);
        std::fs::write(&path, format!("{GOOD}[commands]\nsudo = true\n")).unwrap();
        assert!(
            AgentConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("sudo")
        );
        std::fs::write(
            &path,
            format!("{GOOD}[commands]\nworkers = 0\nservices = [\"a b\"]\n"),
        )
        .unwrap();
        match AgentConfig::load(&path).unwrap_err() {
            ConfigError::Invalid { problems, .. } => assert_eq!(problems.len(), 2, "{problems:?}"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn metrics_section_is_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert_eq!(cfg.metrics, None);
        // Absent stays absent when `enroll` writes the configuration.
        assert!(!toml::to_string_pretty(&cfg).unwrap().contains("metrics"));

        let section = "[metrics]\nlisten = \"0.0.0.0:9101\"\n";
        std::fs::write(&path, format!("{GOOD}{section}")).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        let listen: SocketAddr = "0.0.0.0:9101".parse().unwrap();
        assert_eq!(cfg.metrics, Some(MetricsSection { listen }));
        let back: AgentConfig = toml::from_str(&toml::to_string_pretty(&cfg).unwrap()).unwrap();
        assert_eq!(back.metrics, cfg.metrics);
        std::fs::write(&path, format!("{GOOD}[metrics]\nlisten = \"[::]:9101\"\n")).unwrap();
        assert!(AgentConfig::load(&path).unwrap().metrics.is_some());

        for (bad, needle) in [
            ("listen = \"9101\"", "listen"),
            ("listen = \"pi.local:9101\"", "listen"),
            ("listen = \"0.0.0.0:9101\"\nauth = true", "auth"),
            ("", "listen"),
        ] {
            std::fs::write(&path, format!("{GOOD}[metrics]\n{bad}\n")).unwrap();
            let e = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        std::fs::write(
            &path,
            format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:0\"\n"),
        )
        .unwrap();
        match AgentConfig::load(&path).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                assert_eq!(problems, ["metrics.listen needs a port other than 0"]);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn apps_sections_are_read_resolved_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert!(cfg.apps.is_empty());
        // None configured: nothing written back either.
        assert!(!toml::to_string_pretty(&cfg).unwrap().contains("apps"));

        let section = r#"
[apps.web]
unit = "web.service"
user = "web"
pre_start = ["bin/migrate", "--up"]
probe = ["/usr/local/bin/check", "--port=8080"]
[apps.kiosk]
unit = "kiosk.service"
user = "kiosk"
dir = "kiosk-app"
reserve_bytes = 1048576
"#;
        std::fs::write(&path, format!("{GOOD}{section}")).unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        let web = &cfg.apps["web"];
        assert_eq!(web.dir("web"), Path::new("/var/lib/pifleet/apps/web"));
        assert_eq!(web.hook("pre_start").unwrap(), ["bin/migrate", "--up"]);
        assert_eq!(
            web.reserve_bytes,
            crate::apps::config::DEFAULT_RESERVE_BYTES
        );
        let kiosk = &cfg.apps["kiosk"];
        assert_eq!(kiosk.dir("kiosk"), dir.path().join("kiosk-app"));
        assert_eq!(kiosk.reserve_bytes, 1024 * 1024);
        let back: AgentConfig = toml::from_str(&toml::to_string_pretty(&cfg).unwrap()).unwrap();
        assert_eq!(back.apps, cfg.apps);

        std::fs::write(
            &path,
            format!("{GOOD}[apps.web]\nunit = \"web.service\"\nuser = \"web\"\nshell = true\n"),
        )
        .unwrap();
        assert!(
            AgentConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("shell")
        );
        let bad = r#"
[telemetry]
interval_s = 0
[apps.Web]
unit = "web service"
user = "web"
post_switch = []
"#;
        std::fs::write(&path, format!("{GOOD}{bad}")).unwrap();
        match AgentConfig::load(&path).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                assert_eq!(problems.len(), 4, "{problems:?}");
                assert!(
                    problems[1].starts_with("apps: name \"Web\""),
                    "{problems:?}"
                );
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn refuses_unknown_fields_bad_ids_and_reports_all_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("{GOOD}\nshell = true\n")).unwrap();
        assert!(
            AgentConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("shell")
        );
        std::fs::write(&path, GOOD.replace("pi-01", "Pi 01")).unwrap();
        assert!(AgentConfig::load(&path).is_err());
        std::fs::write(
            &path,
            format!("{GOOD}\n[telemetry]\ninterval_s = 0\n[mqtt]\nkeep_alive_s = 1\n"),
        )
        .unwrap();
        match AgentConfig::load(&path).unwrap_err() {
            ConfigError::Invalid { problems, .. } => assert_eq!(problems.len(), 2),
            e => panic!("{e}"),
        }
    }
}
