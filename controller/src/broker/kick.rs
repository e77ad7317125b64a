//! Ending a device's live session at the broker. Mosquitto 2.0 has no administrative
//! disconnect without its dynamic-security plugin, but it enforces unique client ids across
//! listeners: a controller identity connecting on the controller listener with the
//! device's id (the device listener forces a device's client id to its CN) takes the
//! session over, which closes the device's connection; with a clean session and an
//! immediate DISCONNECT, nothing of the session remains.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pifleet_io::{load_certs, load_key, provider};
use pifleet_shared::DeviceId;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, TlsConfiguration, Transport,
};
use rustls::{ClientConfig, RootCertStore};

use super::BrokerError;
use super::identity::IdentityFiles;

/// How long a kick may take by default (connect, CONNACK, DISCONNECT).
pub const KICK_TIMEOUT: Duration = Duration::from_secs(10);

/// A controller's client of the broker's controller listener.
#[derive(Debug, Clone)]
pub struct ControllerClientConfig {
    /// The broker's host name, as in its server certificate.
    pub host: String,
    /// The controller listener's port.
    pub port: u16,
    /// The controller's CA (which issued the broker's server certificate).
    pub ca: PathBuf,
    /// The controller identity's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Longest a kick may take.
    pub timeout: Duration,
}

impl ControllerClientConfig {
    /// The identity `broker-config controller-identity` wrote into `dir`.
    pub fn from_identity_dir(dir: &Path, host: &str, port: u16) -> Self {
        let files = IdentityFiles::in_dir(dir);
        Self {
            host: host.to_owned(),
            port,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
            timeout: KICK_TIMEOUT,
        }
    }

    /// The rustls client config: trusts only the CA, presents the controller identity.
    pub fn tls(&self) -> Result<Arc<ClientConfig>, BrokerError> {
        let tls = |e: &dyn std::fmt::Display| BrokerError::Tls(e.to_string());
        let mut roots = RootCertStore::empty();
        for c in load_certs(&self.ca).map_err(|e| tls(&e))? {
            roots.add(c).map_err(|e| tls(&e))?;
        }
        let cert = load_certs(&self.cert).map_err(|e| tls(&e))?;
        let key = load_key(&self.key).map_err(|e| tls(&e))?;
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(cert, key)
            .map_err(|e| tls(&e))?;
        Ok(Arc::new(cfg))
    }

    /// MQTT options for a client `client_id` of the controller listener.
    pub fn mqtt_options(&self, client_id: &str) -> Result<MqttOptions, BrokerError> {
        let mut opts = MqttOptions::new(client_id, &self.host, self.port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            self.tls()?,
        )));
        opts.set_clean_session(true);
        opts.set_keep_alive(Duration::from_secs(30));
        let max = crate::mqtt::max_packet_size();
        opts.set_max_packet_size(max, max);
        Ok(opts)
    }
}

/// Ends `device`'s session at the broker: connects with its client id (the broker closes
/// the device's connection), then disconnects. Returns once the broker accepted the
/// takeover and the DISCONNECT is sent.
pub async fn kick(client: &ControllerClientConfig, device: &DeviceId) -> Result<(), BrokerError> {
    let err = |why: String| BrokerError::Kick {
        device: device.clone(),
        broker: format!("{}:{}", client.host, client.port),
        why,
    };
    let opts = client.mqtt_options(device.as_str())?;
    let (mqtt, mut events) = AsyncClient::new(opts, 4);
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => return Err(err(describe(&e))),
            }
        }
        mqtt.disconnect()
            .await
            .map_err(|e| err(format!("queueing DISCONNECT: {e}")))?;
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(err(describe(&e))),
            }
        }
    };
    tokio::time::timeout(client.timeout, run)
        .await
        .map_err(|_| err(format!("no answer within {:?}", client.timeout)))?
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("the broker refused: {code:?}"),
        other => other.to_string(),
    }
}
