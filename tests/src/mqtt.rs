//! MQTT clients for tests and the simulator: rumqttc over mutual TLS with a device's
//! enrolled certificate (or any certificate a test wants to try), session helpers that wait
//! for a CONNACK, a packet or the end of the connection, and valid telemetry payloads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pifleet_shared::codec;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, TlsConfiguration,
    Transport,
};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::harness::{Agent, Controller};

/// How long the session helpers wait for a CONNACK, an expected packet or the gateway closing
/// the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let (client, mut el) = AsyncClient::new(opts, 64);
    // Small MQTT packets back to back (PUBACK then PUBLISH) must not wait for Nagle.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (client, el)
}

/// An rumqttc session with the controller's gateway presenting `dev`'s certificate with client
/// id `client_id`.
pub fn session(ctl: &Controller, dev: &Agent, client_id: &str) -> Result<(AsyncClient, EventLoop)> {
    let tls = client_tls(&ctl.ca_path(), Some((&dev.cert(), &dev.key())))?;
    Ok(client(ctl.mqtt.port(), client_id, tls))
}

/// Polls until the CONNACK arrives; fails if the connection ends first.
pub async fn connack(ev: &mut EventLoop) -> Result<()> {
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match ev.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => return Ok(()),
                _ => continue,
            }
        }
    })
    .await
    .context("no CONNACK in time")?
}

/// A session of `dev` as itself, connected.
pub async fn connected(ctl: &Controller, dev: &Agent) -> Result<(AsyncClient, EventLoop)> {
    let (c, mut ev) = session(ctl, dev, &dev.id)?;
    connack(&mut ev)
        .await
        .with_context(|| format!("{} connect; controller log:\n{}", dev.id, ctl.log()))?;
    Ok((c, ev))
}

/// Polls until the connection ends (the positive signal that the gateway closed it);
/// returns the error it ended with and every incoming packet seen before.
pub async fn until_closed(ev: &mut EventLoop) -> Result<(ConnectionError, Vec<Packet>)> {
    let mut seen = Vec::new();
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(p)) => seen.push(p),
                Ok(Event::Outgoing(_)) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .map(|e| (e, seen))
    .context("the gateway did not close the connection")
}

/// Polls until an incoming packet satisfies `want`; fails if the connection ends first.
pub async fn until_incoming(
    ev: &mut EventLoop,
    mut want: impl FnMut(&Packet) -> bool,
) -> Result<Packet> {
    tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            if let Event::Incoming(p) = ev.poll().await?
                && want(&p)
            {
                return Ok(p);
            }
        }
    })
    .await
    .context("expected packet did not arrive")?
}

/// Polls `ev` in a task that forwards every incoming PUBLISH; when the connection ends it
/// sends the error's text and stops.
pub fn forward_publishes(
    mut ev: EventLoop,
) -> (
    mpsc::UnboundedReceiver<Result<Publish, String>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Result<Publish, String>>();
    let task = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Ok(p));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    (rx, task)
}

fn sample(seq: u64) -> v1::Sample {
    v1::Sample {
        seq,
        ts_ms: 1_700_000_000_000,
        cpu_pct: 1.0,
        load1: 0.0,
        load5: 0.0,
        load15: 0.0,
        mem_total_bytes: 1 << 30,
        mem_used_bytes: 1 << 29,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![],
        nets: vec![],
        temp_c: None,
        throttled: None,
        uptime_s: 1,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}

/// A valid v1 telemetry payload with one sample.
pub fn telemetry(seq: u64) -> Result<Vec<u8>> {
    let msg = v1::Telemetry {
        samples: vec![sample(seq)],
    };
    Ok(codec::encode(Kind::Telemetry, &msg)?)
}

/// A raw TLS connection to the gateway with `dev`'s certificate: the handshake is done and
/// nothing MQTT has been sent yet, so a test controls every byte (or withholds them).
pub async fn raw_tls(
    ctl: &Controller,
    dev: &Agent,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = client_tls(&ctl.ca_path(), Some((&dev.cert(), &dev.key())))?;
    let tcp = tokio::net::TcpStream::connect(ctl.mqtt).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let stream = tokio::time::timeout(
        CLOSE_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(stream)
}

/// An MQTT 3.1.1 CONNECT packet with a clean session, keep-alive 60 s and `client_id`.
pub fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    body.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// What the gateway answered on a raw connection after the test wrote to it.
#[derive(Debug, PartialEq, Eq)]
pub enum RawAnswer {
    /// The first bytes it sent (a CONNACK starts with 0x20).
    Bytes(Vec<u8>),
    /// It closed the connection (EOF, reset, or the write failed) without a byte.
    Closed,
}

/// Writes `bytes`, then reads the answer: bytes, or the connection closed.
pub async fn write_and_read<S>(stream: &mut S, bytes: &[u8]) -> Result<RawAnswer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
        return Ok(RawAnswer::Closed);
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(CLOSE_TIMEOUT, stream.read(&mut buf)).await {
        Err(_) => anyhow::bail!("the gateway neither answered nor closed the connection"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(RawAnswer::Closed),
        Ok(Ok(n)) => Ok(RawAnswer::Bytes(buf[..n].to_vec())),
    }
}
