//! systemd's service notification protocol, for `Type=notify` with `WatchdogSec=`: `READY=1`
//! once the agent has started and `WATCHDOG=1` from its main loop, as datagrams to the socket
//! `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace). Without
//! `NOTIFY_SOCKET` every call does nothing. A send that fails is logged (once until one works again); if pings stop reaching
//! systemd it restarts the agent, which is what the watchdog is for.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The socket systemd listens on, if the agent runs under it.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
    /// Half of `WATCHDOG_USEC` when systemd expects pings.
    ping_every: Option<Duration>,
    /// Whether the last send failed: logged once until one works again.
    failing: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID` is
    /// unset or names this process, as sd_notify does).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let target = match path.as_encoded_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
            }
            _ => std::os::unix::net::SocketAddr::from_pathname(&path),
        };
        let socket = UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        });
        let (target, socket) = match (target, socket) {
            (Ok(t), Ok(s)) => (t, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                return None;
            }
        };
        let mine = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p.trim() == std::process::id().to_string());
        let ping_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && mine)
            .map(|us| Duration::from_micros(us / 2));
        Some(Self {
            socket,
            target,
            ping_every,
            failing: AtomicBool::new(false),
        })
    }

    /// How often to send `WATCHDOG=1`, if systemd watches the agent.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, …).
    pub fn send(&self, state: &str) {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.target);
        let was_failing = self.failing.swap(sent.is_err(), Ordering::Relaxed);
        if let (Err(e), false) = (sent, was_failing) {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            target: std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            ping_every: None,
            failing: AtomicBool::new(false),
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }
}
