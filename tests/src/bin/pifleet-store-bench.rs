//! Ingest into PostgreSQL from several controllers at once: `--controllers` processes, each
//! with its own connection pool like a controller replica, commit telemetry through the
//! store's own ingest batch (`Store::write_batch`, the writer's group commit: up to
//! `--batch` samples per transaction) for `--seconds`; the samples committed per second
//! over all of them is the result. Side by side in the same run, on the same server, the
//! anchors: plain 1,000-row `INSERT`s and `COPY` into an unindexed, unpartitioned table of
//! telemetry's shape (what PostgreSQL itself does with no pifleet in the way).
//!
//! ```text
//! cargo build --release -p pifleet-tests --features pifleet-controller/testkit
//! target/release/pifleet-store-bench --controllers 3 --devices 3000 --per-message 1
//! ```
//!
//! Starts its own PostgreSQL (Debian's, in a temporary directory) unless `--url` names one.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pifleet_controller::store::pg_cluster::PgCluster;
use pifleet_controller::store::{IngestOp, PgOptions, Store};
use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::postgres::PgPool;

#[derive(Parser, Debug, Clone)]
#[command(about = "pifleet PostgreSQL ingest benchmark")]
struct Args {
    /// Controller processes writing at once.
    #[arg(long, default_value_t = 3)]
    controllers: usize,
    /// Devices (split between the controllers).
    #[arg(long, default_value_t = 3_000)]
    devices: usize,
    /// Samples per device message (1: single-sample agents; more: agents that batch).
    #[arg(long, default_value_t = 1)]
    per_message: usize,
    /// Samples per ingest transaction (the writer's `ingest.batch_max_samples`).
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// How long each controller writes.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// An existing database (with its password); else a throwaway cluster is started.
    #[arg(long)]
    url: Option<String>,
    /// Internal: run as controller number N against `--url`.
    #[arg(long, hide = true)]
    worker: Option<usize>,
}

fn sample(seq: u64, ts_ms: i64) -> v1::Sample {
    v1::Sample {
        seq,
        ts_ms,
        cpu_pct: 12.5,
        load1: 0.5,
        load5: 0.25,
        load15: 0.125,
        mem_total_bytes: 1 << 30,
        mem_used_bytes: 1 << 29,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![v1::Disk {
            mount: "/".into(),
            fs: "ext4".into(),
            total_bytes: 32 << 30,
            used_bytes: 8 << 30,
        }],
        nets: vec![v1::Net {
            iface: "eth0".into(),
            rx_bytes: seq * 1_000,
            tx_bytes: seq * 100,
        }],
        temp_c: Some(48.0),
        throttled: Some(0),
        uptime_s: 600,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}

fn device(i: usize) -> String {
    format!("bench-{i:06}")
}

/// One controller: commits batches for its devices until the time is up; prints
/// `samples commits` on stdout.
async fn worker(args: &Args, n: usize, url: &str) -> Result<()> {
    let store = Store::open_postgres(url, &PgOptions::default()).await?;
    let mine: Vec<DeviceId> = (0..args.devices)
        .filter(|i| i % args.controllers == n)
        .map(|i| DeviceId::parse(&device(i)))
        .collect::<Result<_, _>>()?;
    let messages_per_batch = (args.batch / args.per_message).max(1);
    let now = pifleet_controller::store::now_ms();
    let mut seq = vec![0u64; mine.len()];
    let (mut samples, mut commits, mut next) = (0u64, 0u64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        let mut ops = Vec::with_capacity(messages_per_batch);
        for _ in 0..messages_per_batch {
            let d = next % mine.len();
            next += 1;
            let batch: Vec<v1::Sample> = (0..args.per_message)
                .map(|_| {
                    seq[d] += 1;
                    sample(seq[d], now + i64::try_from(seq[d]).unwrap_or(0) * 1_000)
                })
                .collect();
            ops.push(IngestOp::Telemetry {
                device: mine[d].clone(),
                samples: batch,
            });
        }
        store.write_batch(&ops).await?;
        samples += (messages_per_batch * args.per_message) as u64;
        commits += 1;
    }
    println!("{samples} {commits}");
    Ok(())
}

/// Rows/s PostgreSQL itself takes into a plain table of telemetry's shape: 1,000-row
/// INSERTs, then COPY.
async fn anchors(pool: &PgPool, seconds: u64) -> Result<(f64, f64)> {
    sqlx::raw_sql(
        "CREATE TABLE anchor (device_id TEXT, seq BIGINT, ts BIGINT, received_at BIGINT, \
         cpu_pct DOUBLE PRECISION, load1 DOUBLE PRECISION, mem_total BIGINT, mem_used BIGINT, \
         temp_c DOUBLE PRECISION, disks TEXT, nets TEXT)",
    )
    .execute(pool)
    .await?;
    let row = |i: u64| {
        format!(
            "('bench-{:06}', {i}, {i}, {i}, 12.5, 0.5, 1073741824, 536870912, 48.0, \
             '[{{\"mount\":\"/\"}}]', '[{{\"iface\":\"eth0\"}}]')",
            i % 3_000
        )
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut rows, t) = (0u64, Instant::now());
    while Instant::now() < deadline {
        let values: Vec<String> = (rows..rows + 1_000).map(row).collect();
        let sql = format!("INSERT INTO anchor VALUES {}", values.join(","));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await?;
        rows += 1_000;
    }
    let insert = rows as f64 / t.elapsed().as_secs_f64();
    let mut conn = pool.acquire().await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut rows, t) = (0u64, Instant::now());
    while Instant::now() < deadline {
        let mut copy = conn.copy_in_raw("COPY anchor FROM STDIN").await?;
        let mut text = String::new();
        for i in rows..rows + 10_000 {
            text.push_str(&format!(
                "bench-{:06}\t{i}\t{i}\t{i}\t12.5\t0.5\t1073741824\t536870912\t48.0\t[]\t[]\n",
                i % 3_000
            ));
        }
        copy.send(text.into_bytes()).await?;
        copy.finish().await?;
        rows += 10_000;
    }
    let copy = rows as f64 / t.elapsed().as_secs_f64();
    Ok((insert, copy))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.worker {
        let url = args.url.clone().context("--worker needs --url")?;
        return worker(&args, n, &url).await;
    }
    let cluster;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => {
            cluster = PgCluster::start().await?;
            cluster.fresh_database().await?
        }
    };
    // The schema (migrations) and the devices, once.
    let store = Store::open_postgres(&url, &PgOptions::default()).await?;
    let pool = PgPool::connect(&url).await?;
    let ids: Vec<String> = (0..args.devices).map(device).collect();
    sqlx::query(
        "INSERT INTO devices (id, labels, enrolled_at, online) \
         SELECT id, '{}', 0, TRUE FROM UNNEST($1::text[]) AS id",
    )
    .bind(&ids)
    .execute(&pool)
    .await?;
    drop(store);
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let children: Vec<_> = (0..args.controllers)
        .map(|n| {
            tokio::process::Command::new(&exe)
                .args(["--worker", &n.to_string(), "--url", &url])
                .args(["--controllers", &args.controllers.to_string()])
                .args(["--devices", &args.devices.to_string()])
                .args(["--per-message", &args.per_message.to_string()])
                .args(["--batch", &args.batch.to_string()])
                .args(["--seconds", &args.seconds.to_string()])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let (mut samples, mut commits) = (0u64, 0u64);
    for c in children {
        let out = c.wait_with_output().await?;
        if !out.status.success() {
            bail!("a controller failed: {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        samples += it.next().context("no count")??;
        commits += it.next().context("no count")??;
    }
    let took = started.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&pool)
        .await?;
    if u64::try_from(stored)? != samples {
        bail!("{samples} samples committed but {stored} stored");
    }
    let rate = samples as f64 / took;
    let (insert, copy) = anchors(&pool, args.seconds).await?;
    println!(
        "| {} controllers | {} devices | {} samples/message | {} samples/commit |",
        args.controllers, args.devices, args.per_message, args.batch
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| pifleet ingest (write_batch) | {rate:.0} samples/s | {commits} commits | {:.1} ms/commit |",
        took * 1000.0 * args.controllers as f64 / commits as f64
    );
    println!(
        "| anchor: 1,000-row INSERT | {insert:.0} rows/s | pifleet {:.2}× |",
        rate / insert
    );
    println!(
        "| anchor: COPY | {copy:.0} rows/s | pifleet {:.2}× |",
        rate / copy
    );
    Ok(())
}
