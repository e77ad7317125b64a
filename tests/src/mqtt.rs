//! MQTT clients for tests and the simulator: rumqttc over mutual TLS with a device's
//! enrolled certificate (or any certificate a test wants to try).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use rustls::{ClientConfig, RootCertStore};

fn certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?)
}

/// The ring provider, installed once.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let p = rustls::crypto::ring::default_provider();
    let _ = rustls::crypto::CryptoProvider::install_default(p.clone());
    Arc::new(p)
}

/// A client TLS config trusting `ca`, presenting `cert`/`key` when given.
pub fn client_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => {
            let pem = std::fs::read(key)?;
            let key =
                rustls_pemfile::private_key(&mut pem.as_slice())?.context("no private key")?;
            b.with_client_auth_cert(certs(cert)?, key)?
        }
        None => b.with_no_client_auth(),
    })
}

/// An rumqttc client (not yet connected: poll the event loop) to the gateway at `port` on
/// localhost with the given client id and TLS config.
pub fn client(port: u16, client_id: &str, tls: ClientConfig) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, "localhost", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    AsyncClient::new(opts, 64)
}
