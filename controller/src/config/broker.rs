//! `[mqtt] mode` and `[mqtt.external]`: whether devices connect to the built-in gateway (the
//! default) or to an external MQTT broker this controller subscribes to (docs/SCALING.md).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where devices connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// The controller's own gateway on `mqtt.listen`.
    #[default]
    Embedded,
    /// An external broker (`[mqtt.external]`); the controller is one of its subscribers.
    External,
}

/// The external broker this controller subscribes to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalBroker {
    /// The broker's controller listener, `host:port` (the host as in the broker's
    /// certificate).
    pub address: Option<String>,
    /// This controller's name among the broker's controllers (`broker-config mosquitto
    /// --controller NAME`); its client id is `pifleet-controller#NAME`.
    pub name: Option<String>,
    /// What `broker-config controller-identity --out` wrote: `ca.crt`, `controller.crt`,
    /// `controller.key`.
    pub identity_dir: Option<PathBuf>,
    /// A device that sent nothing for this long is shown offline (the broker does not tell
    /// its subscribers who is connected).
    pub presence_timeout_s: u64,
    /// When the broker runs on this host: the directory `broker-config mosquitto --out`
    /// wrote (its `crl.pem` is rewritten at each revocation), and the pid file of the process
    /// sent SIGHUP to reload it. Elsewhere, keep the broker's CRL current with
    /// `broker-config sync-crl` on its host.
    pub broker_dir: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

impl Default for ExternalBroker {
    fn default() -> Self {
        Self {
            address: None,
            name: None,
            identity_dir: None,
            presence_timeout_s: 90,
            broker_dir: None,
            pid_file: None,
        }
    }
}

impl ExternalBroker {
    pub fn presence_timeout(&self) -> Duration {
        Duration::from_secs(self.presence_timeout_s)
    }

    /// The broker's host and port, when `address` is `host:port`.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.address.as_deref()?.rsplit_once(':')?;
        Some((
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok()?,
        ))
    }

    pub(super) fn problems(&self, mode: MqttMode, check: &mut impl FnMut(bool, &str)) {
        check(
            (1..=86_400).contains(&self.presence_timeout_s),
            "mqtt.external.presence_timeout_s must be 1..=86400",
        );
        check(
            self.broker_dir.is_some() == self.pid_file.is_some(),
            "mqtt.external.broker_dir and pid_file go together",
        );
        if mode == MqttMode::External {
            check(
                self.host_port().is_some(),
                "mqtt.mode = \"external\" needs mqtt.external.address = \"host:port\"",
            );
            check(
                self.name.is_some() && self.identity_dir.is_some(),
                "mqtt.mode = \"external\" needs mqtt.external.name and identity_dir",
            );
        }
    }
}
