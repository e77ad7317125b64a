//! Fleet simulator: enrolls N devices through the real enrollment API, opens N real
//! mutual-TLS MQTT connections to a running controller, publishes telemetry at a given rate
//! and measures committed samples per second and publish→ack latency (the ack is sent only
//! after the SQLite commit, so this bounds publish→commit from above).
//!
//! ```text
//! pifleet-controller init --data-dir /tmp/bench && pifleet-controller serve --data-dir /tmp/bench &
//! pifleet-sim --data-dir /tmp/bench --devices 1000 --rate 25 --batch 5 --duration 30
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pifleet_agent::config::AgentConfig;
use pifleet_controller::datadir::DataDir;
use pifleet_controller::store::Store;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};
use pifleet_tests::mqtt;
use pifleet_tests::simkit::{Responder, enroll_all};
use rumqttc::{Event, Packet, QoS};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "pifleet fleet simulator and ingest benchmark")]
struct Args {
    /// Data dir of a running controller on this machine.
    #[arg(long)]
    data_dir: PathBuf,
    /// Simulated devices (each a real mTLS connection).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Samples per second per device.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Samples per MQTT message.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds of load after all devices are connected.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Where enrolled identities are kept (reused across runs).
    #[arg(long)]
    identities: Option<PathBuf>,
    /// After connecting: this many sequential single-device `ping` command round trips,
    /// then one command fanned out to every device (0: skip).
    #[arg(long, default_value_t = 0)]
    commands: usize,
}

#[derive(serde::Deserialize)]
struct Bound {
    https: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
}

struct Stats {
    published: AtomicU64,
    acked: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dd = DataDir::new(&args.data_dir);
    let bound: Bound = serde_json::from_slice(
        &std::fs::read(dd.serve_state()).context("is the controller running? (serve.json)")?,
    )?;
    let ids_dir = args
        .identities
        .clone()
        .unwrap_or_else(|| args.data_dir.join("sim-identities"));
    let configs = enroll_all(&dd, &ids_dir, args.devices, bound.https.port()).await?;
    println!("{} devices enrolled", configs.len());

    let stats = Arc::new(Stats {
        published: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    let connected = Arc::new(AtomicU64::new(0));
    let start_at = Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for cfg in configs {
        let stats = stats.clone();
        let connected = connected.clone();
        let start_at = start_at.clone();
        let stop = stop.clone();
        let port = bound.mqtt.port();
        let (rate, batch) = (args.rate, args.batch);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = device(cfg, port, rate, batch, stats, connected, start_at, stop).await {
                eprintln!("device error: {e:#}");
            }
        }));
    }
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < args.devices as u64 {
        if Instant::now() > connect_deadline {
            bail!(
                "only {} of {} devices connected",
                connected.load(Ordering::Relaxed),
                args.devices
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} devices connected in {:.1} s",
        args.devices,
        t0.elapsed().as_secs_f64()
    );
    if args.commands > 0 {
        command_bench(&dd, args.devices, args.commands).await?;
    }
    start_at.notify_waiters();
    let load_start = Instant::now();
    let acked_before = stats.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let acked = stats.acked.load(Ordering::Relaxed) - acked_before;
    let elapsed = load_start.elapsed().as_secs_f64();
    stop.cancel();
    // Let in-flight acks arrive before computing latencies.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = stats.published.load(Ordering::Relaxed);
    let total_acked = stats.acked.load(Ordering::Relaxed);
    let mut lat = stats.latencies_us.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    println!(
        "devices={} rate/device={} batch={} duration={}s",
        args.devices, args.rate, args.batch, args.duration
    );
    println!(
        "offered      {:.0} samples/s",
        args.devices as f64 * args.rate
    );
    println!(
        "committed    {:.0} samples/s (acknowledged after commit)",
        acked as f64 / elapsed
    );
    println!("published    {published} samples, acknowledged {total_acked}");
    println!(
        "publish->ack p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn device(
    cfg: AgentConfig,
    port: u16,
    rate: f64,
    batch: usize,
    stats: Arc<Stats>,
    connected: Arc<AtomicU64>,
    start_at: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let tls = mqtt::client_tls(&cfg.tls.ca, Some((&cfg.tls.cert, &cfg.tls.key)))?;
    let (client, mut el) = mqtt::client(port, cfg.device_id.as_str(), tls);
    let ack_topic = Topic::new(cfg.device_id.clone(), Kind::Ack).to_string();
    let topic = Topic::new(cfg.device_id.clone(), Kind::Telemetry).to_string();
    client
        .subscribe(Topic::down_filter(&cfg.device_id), QoS::AtLeastOnce)
        .await?;
    let responder = Arc::new(Responder::new(&cfg)?);
    let client2 = client.clone();
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let started = start_at.notified();
    // Drive the connection until CONNACK.
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            break;
        }
    }
    connected.fetch_add(1, Ordering::Relaxed);
    let sent2 = sent.clone();
    let stats2 = stats.clone();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic != ack_topic => {
                    if let Some((topic, payload)) = responder.answer(&p.payload) {
                        let _ = client2.try_publish(topic, QoS::AtMostOnce, false, payload);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(ack) = codec::decode::<v1::Ack>(Kind::Ack, &p.payload) else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut sent = sent2.lock().await;
                    let mut lat = Vec::new();
                    for r in ack.ranges {
                        for s in r.first..=r.last {
                            if let Some(t) = sent.remove(&s) {
                                lat.push(now.duration_since(t).as_micros() as u64);
                            }
                        }
                    }
                    drop(sent);
                    stats2.acked.fetch_add(lat.len() as u64, Ordering::Relaxed);
                    stats2.latencies_us.lock().await.extend(lat);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    started.await;
    if rate <= 0.0 {
        stop.cancelled().await;
        poller.abort();
        return Ok(());
    }
    let period = Duration::from_secs_f64(batch as f64 / rate);
    // Spread devices over the period so the load is smooth.
    let offset = rand::random::<f64>() * period.as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(offset)).await;
    let mut tick = tokio::time::interval(period);
    let mut seq = 1_000_000_000u64
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            % 1_000_000)
            * 1000;
    let template = sample(0);
    while !stop.is_cancelled() {
        tick.tick().await;
        let samples: Vec<v1::Sample> = (0..batch)
            .map(|_| {
                seq += 1;
                v1::Sample {
                    seq,
                    ts_ms: 0,
                    ..template.clone()
                }
            })
            .collect();
        let payload = codec::encode(Kind::Telemetry, &v1::Telemetry { samples })?;
        let now = Instant::now();
        {
            let mut s = sent.lock().await;
            for k in seq + 1 - batch as u64..=seq {
                s.insert(k, now);
            }
        }
        client
            .publish(&topic, QoS::AtMostOnce, false, payload)
            .await?;
        stats.published.fetch_add(batch as u64, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    poller.abort();
    Ok(())
}

fn sample(seq: u64) -> v1::Sample {
    v1::Sample {
        seq,
        ts_ms: 0,
        cpu_pct: 12.5,
        load1: 0.4,
        load5: 0.3,
        load15: 0.2,
        mem_total_bytes: 4 << 30,
        mem_used_bytes: 1 << 30,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![v1::Disk {
            mount: "/".into(),
            fs: "ext4".into(),
            total_bytes: 32 << 30,
            used_bytes: 9 << 30,
        }],
        nets: vec![v1::Net {
            iface: "eth0".into(),
            rx_bytes: 123_456_789,
            tx_bytes: 98_765_432,
        }],
        temp_c: Some(51.2),
        throttled: Some(0),
        uptime_s: 86_400,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}

/// Sequential single-device round trips, then a fan-out to every device. Round trip =
/// `sent_at` (signed and handed to the broker) → `finished_at` (signed receipt verified and
/// stored), both recorded by the controller.
async fn command_bench(dd: &DataDir, devices: usize, rounds: usize) -> Result<()> {
    use pifleet_controller::commands::dispatch::{Targets, create_commands};
    use pifleet_controller::model::lifecycle::Status;
    use pifleet_shared::command::Action;
    let store = Store::open(&dd.database(), false).await?;
    let ids: Vec<String> = (0..devices).map(|i| format!("sim-{i:05}")).collect();
    let ttl = Duration::from_secs(120);
    let wait = |cmds: Vec<String>| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut out = Vec::new();
            for id in cmds {
                loop {
                    let row = store.command(&id).await?.context("command vanished")?;
                    if row.status.is_final() {
                        if row.status != Status::Succeeded {
                            bail!(
                                "command {id} ended {} ({:?})",
                                row.status.as_str(),
                                row.reason
                            );
                        }
                        out.push(row);
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("command {id} did not finish");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<_, anyhow::Error>(out)
        }
    };
    let mut rtt = Vec::new();
    for i in 0..rounds {
        let target = Targets::Devices(vec![ids[i % ids.len()].clone()]);
        let created = create_commands(&store, &target, Action::Ping, ttl, ttl).await?;
        for row in wait(created.iter().map(|(id, _)| id.to_string()).collect()).await? {
            rtt.push(row.finished_at.unwrap_or(0) - row.sent_at.unwrap_or(0));
        }
    }
    rtt.sort_unstable();
    let pct = |v: &[i64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "command round trip (sent -> receipt stored), {} sequential pings with {} devices connected: p50 {} ms  p99 {} ms  max {} ms",
        rtt.len(),
        devices,
        pct(&rtt, 0.5),
        pct(&rtt, 0.99),
        pct(&rtt, 1.0)
    );
    let t0 = Instant::now();
    let created = create_commands(
        &store,
        &Targets::Devices(ids.clone()),
        Action::Ping,
        ttl,
        ttl,
    )
    .await?;
    let rows = wait(created.iter().map(|(id, _)| id.to_string()).collect()).await?;
    let first_sent = rows.iter().filter_map(|r| r.sent_at).min().unwrap_or(0);
    let created_at = rows.iter().map(|r| r.created_at).min().unwrap_or(0);
    let last_done = rows.iter().filter_map(|r| r.finished_at).max().unwrap_or(0);
    let mut per: Vec<i64> = rows
        .iter()
        .map(|r| r.finished_at.unwrap_or(0) - r.sent_at.unwrap_or(0))
        .collect();
    per.sort_unstable();
    println!(
        "fan-out of one ping to {} devices: first sent -> last receipt {} ms (created -> last receipt {} ms, {:.1} s wall); per device p50 {} ms p99 {} ms",
        rows.len(),
        last_done - first_sent,
        last_done - created_at,
        t0.elapsed().as_secs_f64(),
        pct(&per, 0.5),
        pct(&per, 0.99)
    );
    store.close().await;
    Ok(())
}
