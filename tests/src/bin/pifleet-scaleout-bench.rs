//! The scale-out path end to end, beside its anchor in the same run: simulated devices →
//! Debian's Mosquitto → `--controllers` controllers on one shared subscription → PostgreSQL →
//! application acks back to the devices (the rate of acknowledged samples); then the same
//! devices → the same Mosquitto → one plain rumqttc subscriber on the same shared
//! subscription that only counts what it receives (what the broker delivers with nobody
//! doing any work). One sample per message, so samples/s are messages/s.
//!
//! ```text
//! cargo build --release -p pifleet-controller -p pifleet-tests --bins
//! target/release/pifleet-scaleout-bench --controllers 3 --devices 500 --rate 20 --seconds 15
//! ```
//!
//! Starts its own PostgreSQL and Mosquitto (Debian's, in temporary directories) and the
//! controllers and `pifleet-sim` found next to this binary.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use pifleet_tests::harness::bin;
use pifleet_tests::mqtt::{client, client_tls};
use pifleet_tests::scalekit::Cluster;
use rumqttc::{Event, Packet, QoS};

#[derive(Parser, Debug)]
#[command(about = "pifleet scale-out end-to-end rate beside a counting subscriber")]
struct Args {
    /// Controllers on the shared subscription.
    #[arg(long, default_value_t = 3)]
    controllers: usize,
    /// Simulated devices (each a real mutual-TLS connection to Mosquitto).
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Samples (messages) per second per device: offer more than the path can take.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of load in each of the two runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Simulator worker processes.
    #[arg(long, default_value_t = 1)]
    processes: usize,
}

/// One run of `pifleet-sim` on `data` (`extra` added); its JSON report.
async fn sim(args: &Args, data: &std::path::Path, extra: &[&str]) -> Result<serde_json::Value> {
    let out = tokio::process::Command::new(bin("pifleet-sim")?)
        .arg("--data-dir")
        .arg(data)
        .args(["--broker", "external", "--json"])
        .args(["--devices", &args.devices.to_string()])
        .args(["--processes", &args.processes.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &args.seconds.to_string()])
        .args(["--backoff-max-s", "2", "--phase-timeout-s", "120"])
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("pifleet-sim failed ({})", out.status);
    }
    if out.stdout.is_empty() {
        // `--enroll-only` reports nothing.
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut cluster = Cluster::start(args.controllers, "", 60).await?;
    let data = cluster.ctls[0].data.clone();
    eprintln!("enrolling {} devices", args.devices);
    sim(&args, &data, &["--enroll-only"]).await?;

    // 1. Through the controllers: what the devices get acknowledged after the commit.
    eprintln!("run 1: {} controllers", args.controllers);
    let rows_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&cluster.db.pool)
        .await?;
    let e2e = sim(&args, &data, &["--ack", "app"]).await?;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&cluster.db.pool)
        .await?;
    let steady = &e2e["steady"];
    let e2e_s = f(&steady["duration_s"]);
    let e2e_rate = f(&steady["committed_per_s"]);

    // 2. The anchor: the controllers stop, one subscriber that only counts takes the shared
    // subscription with the first controller's identity.
    for c in &mut cluster.ctls {
        c.stop();
    }
    let id = cluster
        .broker
        .controller(pifleet_tests::broker::CONTROLLERS[0]);
    let tls = client_tls(&id.ca, Some((&id.cert, &id.key)))?;
    let (mqtt, mut ev) = client(cluster.broker.controller_port, "anchor-counter", tls);
    mqtt.subscribe(
        pifleet_controller::mqtt::external::INGEST_FILTER,
        QoS::AtLeastOnce,
    )
    .await?;
    let counted = Arc::new(AtomicU64::new(0));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let counter = {
        let counted = counted.clone();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/telemetry") => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("counting subscriber: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .context("no SUBACK for the counting subscriber")??;
    eprintln!("run 2: one counting subscriber");
    let anchor = sim(&args, &data, &["--ack", "puback"])
        .await
        .with_context(|| format!("broker log:\n{}", cluster.broker.log()))?;
    // What was still on its way when the devices stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    counter.abort();
    let anchor_s = f(&anchor["steady"]["duration_s"]);
    let anchor_rate = counted.load(Ordering::Relaxed) as f64 / anchor_s.max(0.001);

    let offered = args.devices as f64 * args.rate;
    println!(
        "devices {} × {} msg/s = {offered:.0} msg/s offered, {} s per run, {} controllers",
        args.devices, args.rate, args.seconds, args.controllers
    );
    println!(
        "pifleet (devices → Mosquitto → controllers → PostgreSQL → acks): {e2e_rate:.0} msg/s acknowledged \
         (published {:.0} msg/s; ack p50 {:.0} ms, p99 {:.0} ms; {} rows stored by the simulator's \
         end, {:.0} rows/s)",
        f(&steady["published"]) / e2e_s.max(0.001),
        f(&steady["ack_p50_ms"]),
        f(&steady["ack_p99_ms"]),
        rows - rows_before,
        (rows - rows_before) as f64 / e2e_s.max(0.001),
    );
    println!(
        "anchor (devices → Mosquitto → counting subscriber): {anchor_rate:.0} msg/s received \
         (published {:.0} msg/s)",
        f(&anchor["steady"]["published"]) / anchor_s.max(0.001),
    );
    println!(
        "ratio pifleet / anchor: {:.2}",
        e2e_rate / anchor_rate.max(0.001)
    );
    Ok(())
}
