//! The agent's optional local `/metrics` listener (`[metrics] listen` in agent.toml), through
//! the real binaries: off by default (the agent holds no listening socket), a taken port
//! logged as an error while the agent keeps sending telemetry, and when enabled the newest
//! sample under the controller's metric names, accepted by `promtool check metrics`, with
//! 404/405 for anything but `GET /metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, free_addr, merge_config, wait_for};
use pifleet_tests::promkit::{promtool_check, value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
const DEVICE: &str = "pi-localmetrics";

/// An HTTP answer, split up.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method path` over a raw connection and reads the answer to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Reply> {
    let talk = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// The pid of `pifleet-agent run` for this agent (found by its config path).
fn agent_pid(agent: &Agent) -> Option<u32> {
    let config = agent.config();
    let needle = config.as_os_str().as_bytes();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let is_run = args.clone().any(|a| a == b"run");
        (is_run && args.any(|a| a == needle)).then_some(pid)
    })
}

/// Local addresses (hex, as in /proc/net/tcp) of the TCP sockets `pid` listens on.
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // 0A is TCP_LISTEN; column 9 is the socket's inode.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                out.push(cols[1].to_owned());
            }
        }
    }
    out
}

async fn highest_seq(ctl: &Controller) -> i64 {
    ctl.seqs(DEVICE)
        .await
        .ok()
        .and_then(|s| s.last().copied())
        .unwrap_or(0)
}

/// Waits until the controller has stored a sample newer than `after`.
async fn wait_for_telemetry(ctl: &Controller, after: i64) -> i64 {
    wait_for(WAIT, "telemetry from the agent", || async move {
        let seq = highest_seq(ctl).await;
        (seq > after).then_some(seq)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_metrics_listener() {
    let ctl = Controller::start().await.unwrap();
    let mut agent = Agent::enroll(&ctl, DEVICE, 1).unwrap();
    let config = std::fs::read_to_string(agent.config()).unwrap();
    assert!(!config.contains("[metrics]"), "{config}");

    // Off by default: the agent does its job and listens on nothing.
    let addr = free_addr().unwrap();
    agent.start().unwrap();
    let seq = wait_for_telemetry(&ctl, 0).await;
    let pid = agent_pid(&agent).expect("the agent's process");
    assert_eq!(listening_sockets(pid), Vec::<String>::new());
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(agent.stop().unwrap().success(), "{}", agent.log());

    // A port that is taken: an error in the log, and the agent keeps sending telemetry.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    merge_config(
        &agent.config(),
        &format!("[metrics]\nlisten = \"{taken_addr}\"\n"),
    )
    .unwrap();
    agent.start().unwrap();
    let seq = wait_for_telemetry(&ctl, seq).await;
    let events = agent.log_events("metrics listener not started; running without it");
    let event = events.first().unwrap_or_else(|| panic!("{}", agent.log()));
    assert_eq!(event["level"], "ERROR", "{event}");
    let error = event["error"].as_str().unwrap();
    assert!(error.contains(&taken_addr.to_string()), "{error}");
    assert!(agent.running());
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
    drop(taken);

    // Enabled: the newest sample under the controller's names, and nothing else served.
    merge_config(
        &agent.config(),
        &format!("[metrics]\nlisten = \"{addr}\"\n"),
    )
    .unwrap();
    agent.start().unwrap();
    wait_for_telemetry(&ctl, seq).await;
    let reply = wait_for(WAIT, "/metrics with a sample", || async move {
        let r = request(addr, "GET", "/metrics").await.ok()?;
        (r.status == 200 && value(&r.body, "pifleet_device_up") == Some(1.0)).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{reply:?}"
    );
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    let t = &reply.body;
    let cpu = value(t, "pifleet_device_cpu_ratio").unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{t}");
    let info = format!(
        "pifleet_agent_info{{version=\"{}\",device=\"{DEVICE}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(t, &info), Some(1.0), "{t}");
    let total = value(t, "pifleet_device_memory_total_bytes").unwrap();
    let used = value(t, "pifleet_device_memory_used_bytes").unwrap();
    assert!(total > 0.0 && used > 0.0 && used <= total, "{t}");
    assert!(
        value(t, "pifleet_device_uptime_seconds").unwrap() > 0.0,
        "{t}"
    );
    assert!(t.contains("pifleet_device_disk_used_bytes{mount=\""), "{t}");
    assert!(
        t.contains("pifleet_device_network_receive_bytes_total{interface=\""),
        "{t}"
    );
    promtool_check(t);

    for (method, path, status) in [
        ("GET", "/", 404),
        ("GET", "/metrics/devices/pi-localmetrics", 404),
        ("POST", "/metrics", 405),
        ("PUT", "/metrics", 405),
    ] {
        let r = request(addr, method, path).await.unwrap();
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert!(!r.body.contains("pifleet_"), "{r:?}");
    }
    let r = request(addr, "POST", "/metrics").await.unwrap();
    assert_eq!(r.header("allow"), Some("GET"), "{r:?}");

    // Exactly one listening socket, and it closes with the agent.
    let pid = agent_pid(&agent).expect("the agent's process");
    assert_eq!(listening_sockets(pid).len(), 1, "{}", agent.log());
    assert!(agent.stop().unwrap().success(), "{}", agent.log());
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}
