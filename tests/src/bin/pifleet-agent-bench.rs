//! Agent footprint benchmark, side by side with Prometheus node_exporter in the same run:
//! steady RSS and CPU time per sample of `pifleet-agent` (telemetry every second, real mTLS
//! to a real controller) versus RSS and CPU time per scrape of node_exporter (scraped every
//! second), plus the size of the agent binary.
//!
//! ```text
//! cargo build --release --workspace && cargo build --profile agent-release -p pifleet-agent
//! target/release/pifleet-agent-bench --agent-bin target/agent-release/pifleet-agent --seconds 60
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use pifleet_tests::harness::{Controller, bin};
use pifleet_tests::procstat::{TICKS_PER_SEC, Usage, usage};

#[derive(Parser, Debug)]
struct Args {
    /// The agent binary to measure (default: next to this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// node_exporter binary.
    #[arg(long, default_value = "/usr/bin/prometheus-node-exporter")]
    node_exporter: PathBuf,
    /// Measurement window after a 10 s warm-up.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

fn scrape(port: u16) -> Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let agent_bin = match &args.agent_bin {
        Some(p) => p.clone(),
        None => bin("pifleet-agent")?,
    };
    if !args.node_exporter.exists() {
        bail!(
            "{} not found: apt-get install prometheus-node-exporter",
            args.node_exporter.display()
        );
    }
    let ctl = Controller::start().await?;
    let dir = ctl.tmp.path().join("agent");
    let token = ctl.token(None, "10m")?;
    let st = Command::new(&agent_bin)
        .args([
            "enroll",
            "--controller",
            &ctl.url(),
            "--token",
            &token,
            "--device-id",
            "bench-pi",
            "--interval",
            "1",
        ])
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("enroll failed");
    }
    let mut agent: Child = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(dir.join("agent.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ne_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut ne: Child = Command::new(&args.node_exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    let warmup_end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < warmup_end {
        let _ = scrape(ne_port);
        std::thread::sleep(Duration::from_secs(1));
    }
    let seq_before = ctl.seqs("bench-pi").await?.last().copied().unwrap_or(0);
    let a0 = usage(agent.id())?;
    let n0 = usage(ne.id())?;
    let mut agent_rss_max = a0.rss_kib;
    let mut ne_rss_max = n0.rss_kib;
    let mut scrapes = 0u64;
    let mut scrape_bytes = 0usize;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        scrape_bytes = scrape(ne_port)?;
        scrapes += 1;
        agent_rss_max = agent_rss_max.max(usage(agent.id())?.rss_kib);
        ne_rss_max = ne_rss_max.max(usage(ne.id())?.rss_kib);
        std::thread::sleep(Duration::from_secs(1));
    }
    let a1 = usage(agent.id())?;
    let n1 = usage(ne.id())?;
    let seq_after = ctl.seqs("bench-pi").await?.last().copied().unwrap_or(0);
    let samples = (seq_after - seq_before).max(1) as f64;
    // schedstat when available (ns); clock ticks (10 ms) otherwise.
    let cpu_ms = |u0: &Usage, u1: &Usage| {
        if u1.cpu_ns > u0.cpu_ns {
            (u1.cpu_ns - u0.cpu_ns) as f64 / 1e6
        } else {
            (u1.cpu_ticks - u0.cpu_ticks) as f64 / TICKS_PER_SEC * 1000.0
        }
    };
    let agent_cpu_ms = cpu_ms(&a0, &a1);
    let ne_cpu_ms = cpu_ms(&n0, &n1);
    let size = std::fs::metadata(&agent_bin)?.len();

    println!("window {} s", args.seconds);
    println!(
        "pifleet-agent   binary {:.2} MiB ({})",
        size as f64 / 1048576.0,
        agent_bin.display()
    );
    println!(
        "pifleet-agent   RSS now {:.2} MiB, max {:.2} MiB; CPU {:.1} ms for {} samples = {:.3} ms/sample",
        a1.rss_kib as f64 / 1024.0,
        agent_rss_max as f64 / 1024.0,
        agent_cpu_ms,
        samples,
        agent_cpu_ms / samples
    );
    println!(
        "node_exporter   RSS now {:.2} MiB, max {:.2} MiB; CPU {:.1} ms for {} scrapes = {:.3} ms/scrape ({} bytes each)",
        n1.rss_kib as f64 / 1024.0,
        ne_rss_max as f64 / 1024.0,
        ne_cpu_ms,
        scrapes,
        ne_cpu_ms / scrapes as f64,
        scrape_bytes
    );
    let _ = agent.kill();
    let _ = ne.kill();
    let _ = agent.wait();
    let _ = ne.wait();
    Ok(())
}
