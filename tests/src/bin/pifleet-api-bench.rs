//! Admin API benchmark: sign-in latency (the argon2id cost) and authenticated
//! `GET /api/v1/devices` latency with a large fleet in the database. Starts the real
//! controller (from the same target directory, or `PIFLEET_BIN_DIR`) with a temporary data
//! dir, writes the devices and one telemetry sample each straight into SQLite, then measures
//! over HTTPS. `--login-storm N` instead measures the controller's peak memory while N
//! sign-ins arrive at once.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/pifleet-api-bench --devices 10000 --logins 50 --requests 2000
//! target/release/pifleet-api-bench --login-storm 60
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::harness::Controller;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "pifleet admin API benchmark")]
struct Args {
    /// Devices written into the database.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Sequential sign-ins measured.
    #[arg(long, default_value_t = 50)]
    logins: usize,
    /// Requests per device-list query shape.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Concurrent clients for the device-list queries.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Measure only the Prometheus endpoints (service discovery and every device's scrape).
    #[arg(long)]
    scrapes_only: bool,
    /// Measure only the controller's peak memory (VmRSS, VmHWM) and the latency while this
    /// many sign-ins of as many users arrive at once (half with the right password, half
    /// with a wrong one), at the default argon2 cost.
    #[arg(long, value_name = "N")]
    login_storm: Option<usize>,
    /// More `[auth]` settings for the storm's controller (TOML lines, e.g.
    /// "argon2_queue = 64"; only what that controller version knows).
    #[arg(long, default_value = "")]
    auth: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(what: &str, mut d: Vec<Duration>) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!(
        "{what:<48} n={:<5} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        d.len(),
        ms(percentile(&d, 0.50)),
        ms(percentile(&d, 0.99)),
        ms(percentile(&d, 1.0)),
    );
}

async fn populate(ctl: &Controller, n: usize) -> Result<()> {
    let db = ctl.db_rw().await?;
    let now = pifleet_controller::store::now_ms();
    let mut tx = db.begin().await?;
    for i in 0..n {
        let id = format!("pi-{i:05}");
        let labels = json!({ "site": format!("site-{}", i % 20), "rack": format!("{}", i % 7) });
        sqlx::query(
            "INSERT INTO devices (id, labels, enrolled_at, first_seen, last_seen, online, \
             agent_version, hostname, os, kernel, arch, model, uptime_s, hello_at, last_seq) \
             VALUES (?, ?, ?, ?, ?, ?, '0.1.0', ?, 'Debian 13', '6.12', 'aarch64', \
             'Raspberry Pi 4 Model B', 1000, ?, 1)",
        )
        .bind(&id)
        .bind(labels.to_string())
        .bind(now - 86_400_000)
        .bind(now - 86_400_000)
        .bind(now - (i as i64 % 600) * 1000)
        .bind(i64::from(i % 10 != 0))
        .bind(format!("host-{i}"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, \
             load15, mem_total, mem_used, swap_total, swap_used, temp_c, throttled, uptime_s, \
             spool_dropped, spool_backlog, disks, nets) VALUES (?, 1, ?, ?, ?, 0.5, 0.4, 0.3, \
             4000000000, ?, 0, 0, ?, 0, 1000, 0, 0, ?, '[]')",
        )
        .bind(&id)
        .bind(now)
        .bind(now)
        .bind((i % 100) as f64)
        .bind(1_000_000_000i64 + (i as i64 % 1000) * 1_000_000)
        .bind(40.0 + (i % 30) as f64)
        .bind(
            json!([{ "mount": "/", "fs": "ext4", "total_bytes": 32_000_000_000u64, "used_bytes": 8_000_000_000u64 + i as u64 }])
                .to_string(),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// 30 days of 10-second samples for one device (259,200 rows), for the history query.
async fn populate_history(ctl: &Controller, device: &str) -> Result<usize> {
    let db = ctl.db_rw().await?;
    let now = pifleet_controller::store::now_ms();
    let n = 30 * 86_400 / 10;
    let mut tx = db.begin().await?;
    for i in 0..n {
        let ts = now - (n - i) as i64 * 10_000;
        sqlx::query(
            "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, \
             load15, mem_total, mem_used, swap_total, swap_used, temp_c, throttled, uptime_s, \
             spool_dropped, spool_backlog, disks, nets, disk_used, disk_total, net_rx, net_tx) \
             VALUES (?, ?, ?, ?, ?, 0.5, 0.4, 0.3, 4000000000, ?, 0, 0, ?, 0, 1000, 0, 0, \
             '[]', '[]', ?, 32000000000, ?, ?)",
        )
        .bind(device)
        .bind(10 + i as i64)
        .bind(ts)
        .bind(ts)
        .bind((i % 100) as f64)
        .bind(1_000_000_000i64 + (i as i64 % 1000) * 1_000_000)
        .bind(40.0 + (i % 30) as f64)
        .bind(8_000_000_000i64 + i as i64)
        .bind(i as i64 * 1000)
        .bind(i as i64 * 500)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// Prometheus' view: the service-discovery document, then one scrape per device.
async fn scrapes(ctl: &Controller, api: &Api, devices: usize, concurrency: usize) -> Result<()> {
    let token = std::fs::read_to_string(ctl.data.join("scrape.token"))?
        .trim()
        .to_owned();
    let mut sd = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let r = api.get("/api/v1/prometheus/sd", Some(&token)).await?;
        sd.push(t.elapsed());
        bytes = r.text.len();
        if r.status != 200 || r.json().as_array().map(Vec::len) != Some(devices) {
            bail!("sd: {} ({bytes} bytes)", r.status);
        }
    }
    report(
        &format!("GET /api/v1/prometheus/sd ({devices} targets, {bytes} bytes)"),
        sd,
    );
    let started = Instant::now();
    let per_client = devices.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let api = api.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut d = Vec::with_capacity(per_client);
            for i in (c * per_client)..((c + 1) * per_client).min(devices) {
                let path = format!("/metrics/devices/pi-{i:05}");
                let t = Instant::now();
                let r = api.get(&path, Some(&token)).await?;
                d.push(t.elapsed());
                if r.status != 200 || !r.text.contains("pifleet_device_up") {
                    bail!("{path}: {} {}", r.status, r.text);
                }
            }
            Ok::<_, anyhow::Error>(d)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("scrape task")??);
    }
    let total = started.elapsed();
    report(
        &format!("GET /metrics/devices/{{id}} x {devices} (c={concurrency})"),
        all,
    );
    println!(
        "all {devices} device scrapes in {:.2} s ({:.0} scrapes/s)",
        total.as_secs_f64(),
        devices as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// `VmRSS` and `VmHWM` of process `pid`, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// N users, then N sign-ins at once while the controller's memory is sampled every 5 ms.
async fn login_storm(n: usize, auth: &str) -> Result<()> {
    let mut ctl = Controller::start_with(&format!(
        "[auth]\nrate_per_minute = 100000\nrate_burst = 100000\n{auth}\n"
    ))
    .await?;
    let api = Api::new(&ctl)?;
    let pid = ctl.child().context("controller not running")?.id();
    let admin = api.admin(&ctl).await?;
    let initial = "initial-paper-cactus-91";
    for i in 0..n {
        let r = api
            .post(
                "/api/v1/users",
                Some(&admin),
                &json!({ "name": format!("storm-{i}"), "role": "viewer", "password": initial }),
            )
            .await?;
        if r.status != 201 {
            bail!("creating storm-{i}: {} {}", r.status, r.text);
        }
    }
    // Start the peak (VmHWM) afresh: writing 5 to clear_refs resets it (Linux 4.0+).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let (before, hwm_before) = memory_kib(pid).context("cannot read the controller's memory")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((rss, _)) = memory_kib(pid) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let api = api.clone();
            let password = if i % 2 == 0 {
                initial.to_owned()
            } else {
                format!("wrong-{i}")
            };
            tokio::spawn(async move {
                let t = Instant::now();
                let r = api.login(&format!("storm-{i}"), &password).await;
                (t.elapsed(), r.map(|r| r.status))
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut busy = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let (took, status) = t.await.context("sign-in task")?;
        let status = status?;
        *statuses.entry(status).or_insert(0usize) += 1;
        if status == 503 {
            busy.push(took);
        } else {
            served.push(took);
        }
    }
    let total = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.context("sampler")?;
    let (after, hwm) = memory_kib(pid).context("cannot read the controller's memory")?;
    println!(
        "{n} sign-ins at once (argon2id defaults, {} right / {} wrong passwords) in {:.2} s; \
         answers {statuses:?}",
        n.div_ceil(2),
        n / 2,
        total.as_secs_f64()
    );
    report("sign-ins answered 200/401", served);
    if !busy.is_empty() {
        report("sign-ins answered 503 (argon2 queue full)", busy);
    }
    println!(
        "controller RSS before {:.1} MiB, peak sampled {:.1} MiB, after {:.1} MiB; \
         VmHWM {:.1} MiB ({})",
        mib(before),
        mib(peak),
        mib(after),
        mib(hwm),
        if reset {
            "reset just before the storm".to_owned()
        } else {
            format!("since start; {:.1} MiB before the storm", mib(hwm_before))
        }
    );
    ctl.stop();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.login_storm {
        return login_storm(n, &args.auth).await;
    }
    let mut ctl = Controller::start_with(
        "[auth]\nrate_per_minute = 100000\nrate_burst = 100000\n[metrics]\nstale_after_s = 86400\n",
    )
    .await?;
    let api = Api::new(&ctl)?;
    let t = Instant::now();
    populate(&ctl, args.devices).await?;
    println!(
        "{} devices with one sample each written in {:.1} s",
        args.devices,
        t.elapsed().as_secs_f64()
    );
    if args.scrapes_only {
        scrapes(&ctl, &api, args.devices, args.concurrency).await?;
        ctl.stop();
        return Ok(());
    }
    let t = Instant::now();
    let rows = populate_history(&ctl, "pi-00000").await?;
    println!(
        "{rows} history samples for pi-00000 written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let token = api.admin(&ctl).await?;

    let mut logins = Vec::with_capacity(args.logins);
    for _ in 0..args.logins {
        let t = Instant::now();
        let r = api.login("admin", TEST_PASSWORD).await?;
        logins.push(t.elapsed());
        if r.status != 200 {
            bail!("login failed: {} {}", r.status, r.text);
        }
    }
    report("POST /api/v1/auth/login (argon2id 19 MiB, t=2)", logins);

    let shapes = [
        "/api/v1/devices?limit=50",
        "/api/v1/devices?limit=50&offset=5000",
        "/api/v1/devices?limit=50&sort=cpu&order=desc",
        "/api/v1/devices?limit=50&sort=last_seen&order=desc&status=online",
        "/api/v1/devices?limit=50&label=site%3Dsite-3",
        "/api/v1/devices?limit=50&q=host-99",
        "/api/v1/devices?limit=500",
    ];
    for path in shapes {
        let per_client = args.requests.div_ceil(args.concurrency);
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let api = api.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut d = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = api.get(path, Some(&token)).await?;
                    d.push(t.elapsed());
                    if r.status != 200 {
                        bail!("{path}: {} {}", r.status, r.text);
                    }
                }
                Ok::<_, anyhow::Error>(d)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.context("client task")??);
        }
        report(&format!("GET {path} (c={})", args.concurrency), all);
    }
    let now = pifleet_controller::store::now_ms();
    for (label, range_ms) in [
        ("1 h", 3_600_000i64),
        ("24 h", 86_400_000),
        ("7 d", 7 * 86_400_000),
        ("30 d", 30 * 86_400_000),
    ] {
        let path = format!(
            "/api/v1/devices/pi-00000/history?from={}&to={now}&points=720",
            now - range_ms
        );
        let mut d = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = api.get(&path, Some(&token)).await?;
            d.push(t.elapsed());
            if r.status != 200 {
                bail!("{path}: {} {}", r.status, r.text);
            }
        }
        report(&format!("GET history {label}, 720 points"), d);
    }
    scrapes(&ctl, &api, args.devices, args.concurrency).await?;
    ctl.stop();
    Ok(())
}
