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
use tokio::sync::oneshot;

/// Broker start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reserve a loopback port for the broker: {0}")]
    Port(#[source] std::io::Error),
    #[error(
        "the embedded broker cannot listen on {addr}: {error}; another local process may \
         have taken the port"
    )]
    Bind { addr: SocketAddr, error: String },
    #[error(
        "{addr}, where the embedded broker should listen, is held by another process; \
         refusing to hand device sessions to it"
    )]
    Foreign { addr: SocketAddr },
    #[error("the embedded broker did not start listening on {0}")]
    NotListening(SocketAddr),
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
    /// Resolves if the broker's listener ever stops (with why).
    pub stopped: oneshot::Receiver<String>,
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

/// Starts the router thread and the plaintext server task; returns once the listener is
/// up and verified to be this process's own.
pub async fn start(max_connections: usize) -> Result<Broker, BrokerError> {
    // rumqttd binds by itself and cannot be handed a listener: pick a free loopback port.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(BrokerError::Port)?;
    let addr = probe.local_addr().map_err(BrokerError::Port)?;
    drop(probe);
    start_on(addr, max_connections).await
}

/// Starts the broker on `addr`. Between choosing a port and rumqttd binding it, another
/// local user could take it and would then receive every device session with the internal
/// password; so after rumqttd binds, the listening socket on `addr` must be one of this
/// process's own descriptors, and start-up aborts if the broker cannot bind or the socket
/// belongs to someone else.
async fn start_on(addr: SocketAddr, max_connections: usize) -> Result<Broker, BrokerError> {
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
    let settings = ServerSettings {
        name: "pifleet-internal".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_packet_size(),
            max_inflight_count: 100,
            auth: Some(auth),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    if listener_owner(addr) != Owner::Nobody {
        return Err(BrokerError::Bind {
            addr,
            error: "the port is already in use".to_owned(),
        });
    }
    let mut server = Server::new(settings, router_tx.clone(), V4);
    let (stopped_tx, mut stopped) = oneshot::channel();
    tokio::spawn(async move {
        // `start` returns only if it cannot bind; its accept loop never ends otherwise.
        let why = match server.start(LinkType::Remote).await {
            Ok(()) => "the listener stopped".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = stopped_tx.send(why);
    });
    let mut ready = false;
    for _ in 0..250 {
        if let Ok(error) = stopped.try_recv() {
            return Err(BrokerError::Bind { addr, error });
        }
        match listener_owner(addr) {
            Owner::Us => {
                ready = true;
                break;
            }
            Owner::Other => return Err(BrokerError::Foreign { addr }),
            Owner::Nobody => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    if !ready {
        return Err(BrokerError::NotListening(addr));
    }
    let (tx, rx, _ack) = LinkBuilder::new(CONTROLLER_CLIENT_ID, router_tx)
        .clean_session(true)
        .dynamic_filters(true)
        .build()
        .map_err(|e| BrokerError::Link(Box::new(e)))?;
    tracing::debug!(%addr, "embedded broker listening on loopback");
    Ok(Broker {
        addr,
        login,
        link: (tx, rx),
        stopped,
    })
}

/// Who holds a TCP socket listening on an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Us,
    Other,
    Nobody,
}

/// Looks the listening socket on `addr` up in `/proc/net/tcp{,6}` and its inode among this
/// process's descriptors (`/proc/self/fd`).
fn listener_owner(addr: SocketAddr) -> Owner {
    let table = match addr {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let inodes = listening_inodes(&text, addr);
    if inodes.is_empty() {
        return Owner::Nobody;
    }
    let ours = own_socket_inodes();
    if inodes.iter().any(|i| ours.contains(i)) {
        Owner::Us
    } else {
        Owner::Other
    }
}

/// Inodes of the sockets listening on `addr` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, addr: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            (*state == LISTEN && parse_proc_addr(local)? == addr)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// `0100007F:1F90` (the address's bytes as the kernel printed its native-order words, then
/// the port) → 127.0.0.1:8080.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Inodes of the sockets among this process's open descriptors.
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Default::default();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    pifleet_shared::token::to_hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses() {
        let lo = if cfg!(target_endian = "little") {
            "0100007F:1F90"
        } else {
            "7F000001:1F90"
        };
        assert_eq!(parse_proc_addr(lo), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("nonsense"), None);
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: {lo} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   1: {lo} 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n"
        );
        assert_eq!(
            listening_inodes(&table, "127.0.0.1:8080".parse().unwrap()),
            vec![4242]
        );
    }

    #[test]
    fn a_listener_is_known_by_its_owner() {
        let mine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = mine.local_addr().unwrap();
        assert_eq!(listener_owner(addr), Owner::Us);
        drop(mine);
        assert_eq!(listener_owner(addr), Owner::Nobody);

        // A listener of another process (python3 is part of the test image).
        let mut other = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(other.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let theirs = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(listener_owner(theirs), Owner::Other);
        let _ = other.kill();
        let _ = other.wait();
    }

    /// The port the broker should use is already taken: start-up fails instead of handing
    /// device sessions to whoever listens there.
    #[tokio::test]
    async fn start_up_aborts_when_the_port_is_taken() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap();
        let err = start_on(addr, 10).await.unwrap_err();
        assert!(matches!(err, BrokerError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("another local process"), "{err}");
    }

    #[tokio::test]
    async fn the_broker_listens_on_its_own_socket() {
        let b = start(10).await.unwrap();
        assert_eq!(listener_owner(b.addr), Owner::Us);
    }
}
