//! The embedded rumqttd broker, built from `Router` + `Server` on our runtime.
//!
//! Its plaintext MQTT listener binds to 127.0.0.1 on an ephemeral port and accepts only the
//! username/password the gateway injects into each CONNECT; the password is random per
//! process and never leaves memory, so nothing outside this process can log in. The
//! controller's own ingest talks to the router through an in-process link, not a socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Server, ServerSettings};
use rumqttd::{Router, RouterConfig};
use tokio::net::TcpStream;

/// Broker start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reserve a loopback port for the broker: {0}")]
    Port(#[source] std::io::Error),
    #[error("the embedded broker did not start listening")]
    NotListening,
    #[error("cannot open the in-process broker link: {0}")]
    Link(#[source] Box<rumqttd::local::LinkError>),
}

/// The gateway's credentials on the broker's plaintext side. Debug hides the password.
#[derive(Clone)]
pub struct BrokerLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BrokerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A running embedded broker.
pub struct Broker {
    /// Loopback address of the plaintext listener (for the gateway only).
    pub addr: SocketAddr,
    pub login: BrokerLogin,
    /// The controller's in-process client.
    pub link: (LinkTx, LinkRx),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("addr", &self.addr)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Client id of the controller's in-process link: not a valid device id (it has `_`), so no
/// device can ever take it over.
pub const CONTROLLER_CLIENT_ID: &str = "_pifleet_controller";

/// Largest MQTT packet accepted from anyone: the biggest payload kind plus headers.
pub fn max_packet_size() -> usize {
    pifleet_shared::topic::max_payload_any() + 1024
}

/// Starts the router thread and the plaintext server task; returns once it accepts.
pub async fn start(max_connections: usize) -> Result<Broker, BrokerError> {
    let router_config = RouterConfig {
        max_connections: max_connections + 16,
        max_outgoing_packet_count: 200,
        max_segment_size: 16 * 1024 * 1024,
        max_segment_count: 4,
        ..RouterConfig::default()
    };
    let router_tx = Router::new(0, router_config).spawn();

    let login = BrokerLogin {
        username: "pifleet-gateway".to_owned(),
        password: random_secret(),
    };
    let mut auth = HashMap::new();
    auth.insert(login.username.clone(), login.password.clone());

    // rumqttd binds by itself; reserve a free loopback port first, retrying on a lost race.
    for _ in 0..10 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(BrokerError::Port)?;
        let addr = probe.local_addr().map_err(BrokerError::Port)?;
        drop(probe);
        let settings = ServerSettings {
            name: "pifleet-internal".to_owned(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: max_packet_size(),
                max_inflight_count: 100,
                auth: Some(auth.clone()),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let mut server = Server::new(settings, router_tx.clone(), V4);
        let task = tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(error = %e, "embedded broker listener stopped");
            }
        });
        if wait_listening(addr).await {
            let (tx, rx, _ack) = LinkBuilder::new(CONTROLLER_CLIENT_ID, router_tx.clone())
                .clean_session(true)
                .dynamic_filters(true)
                .build()
                .map_err(|e| BrokerError::Link(Box::new(e)))?;
            tracing::debug!(%addr, "embedded broker listening on loopback");
            return Ok(Broker {
                addr,
                login,
                link: (tx, rx),
            });
        }
        task.abort();
    }
    Err(BrokerError::NotListening)
}

async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    pifleet_shared::token::to_hex(&b)
}
