//! What the process can hold: device connections against the open-file limit, and the
//! listen backlog against the kernel's cap.
//!
//! Every device costs one descriptor. Without a cap below the open-file limit, the device
//! that takes the last descriptor starves SQLite, the HTTPS listener and `/metrics` with
//! it; with one, devices past it are refused at accept, before any TLS work, while the rest
//! of the controller keeps working.

use std::net::SocketAddr;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::net::{TcpListener, TcpSocket};

/// Descriptors kept for everything but device and HTTPS connections: the database and its
/// WAL, listeners, logs, the runtime, backups.
pub const RESERVE: u64 = 256;

/// How many device connections fit: `wanted`, lowered to what the open-file limit leaves
/// after `https_max` HTTPS connections and [`RESERVE`]. Raises the soft limit to the hard
/// one first (what systemd's `LimitNOFILE` or `ulimit -Hn` allows). Returns the limit and,
/// when it had to be lowered, why.
pub fn connection_limit(wanted: usize, https_max: usize) -> (usize, Option<String>) {
    match raise_nofile() {
        Ok(nofile) => fit(wanted, https_max, nofile),
        Err(_) => (wanted, None),
    }
}

/// Raises the soft open-file limit to the hard one, where it is lower; returns the soft
/// limit in force afterwards.
pub fn raise_nofile() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    Ok(soft)
}

fn fit(wanted: usize, https_max: usize, nofile: u64) -> (usize, Option<String>) {
    let room = nofile.saturating_sub(RESERVE + https_max as u64);
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    if wanted <= room {
        return (wanted, None);
    }
    (
        room,
        Some(format!(
            "mqtt.max_connections is {wanted} but the open-file limit is {nofile}: after \
             https.max_connections ({https_max}) and a reserve of {RESERVE}, at most {room} \
             devices can connect; raise LimitNOFILE (or ulimit -n) to hold more"
        )),
    )
}

/// Binds the device listener with a listen backlog of `backlog` and returns a warning when
/// the kernel caps it lower (`net.core.somaxconn`).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<(TcpListener, Option<String>)> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(backlog)?;
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let warning = cap.filter(|&c| c < backlog).map(|c| {
        format!(
            "mqtt.listen_backlog is {backlog} but net.core.somaxconn caps it at {c}: a \
             reconnecting fleet larger than that retries its connects (SYN) instead of waiting \
             in the queue; raise the sysctl"
        )
    });
    Ok((listener, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_room_for_everything_else() {
        assert_eq!(fit(60_000, 4_096, 1_048_576), (60_000, None));
        let (n, why) = fit(60_000, 4_096, 20_000);
        assert_eq!(n, 20_000 - 4_096 - 256);
        assert!(why.unwrap().contains("open-file limit is 20000"));
        // Even a tiny limit leaves one.
        assert_eq!(fit(10, 4_096, 100).0, 1);
    }

    #[tokio::test]
    async fn the_listener_is_bound_with_its_backlog() {
        let (l, _) = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(l.accept().await.is_ok());
        // A backlog above the kernel's cap is named in a warning.
        let (_l, why) = bind("127.0.0.1:0".parse().unwrap(), 1_000_000).unwrap();
        assert!(why.is_some_and(|w| w.contains("somaxconn")));
    }
}
