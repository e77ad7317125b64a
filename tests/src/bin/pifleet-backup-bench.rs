//! Restore drill benchmark: a data dir (`pifleet-controller init`) whose database holds
//! `--devices` devices (each with a certificate) and `--days` days of one-minute samples for
//! `--sampled` of them (10,000 / 100 / 30: 4.32 M samples), filled with SQL in the
//! controller's own schema; then the real CLI times `backup create` (plain and encrypted),
//! `backup verify` and `backup restore` on it, side by side with the anchor the sqlite3
//! shell gives: `.backup` (alone, and followed by `PRAGMA integrity_check` of the copy, as
//! `create` checks its own) for create, and a copy plus `PRAGMA integrity_check` for
//! verify/restore. Prints a Markdown table with sizes, times and ratios.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/pifleet-backup-bench --work /var/tmp/pifleet-backup-bench
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pifleet_tests::harness::bin;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[derive(Parser, Debug)]
#[command(about = "pifleet backup/restore drill benchmark")]
struct Args {
    /// Devices in the database.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Devices with telemetry.
    #[arg(long, default_value_t = 100)]
    sampled: usize,
    /// Days of one-minute samples per sampled device.
    #[arg(long, default_value_t = 30)]
    days: usize,
    /// Working directory (made; must not exist). Needs about 3× the database size free.
    #[arg(long)]
    work: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| what.to_owned())?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Fills the database of `data` with the devices and samples.
async fn fill(db: &Path, args: &Args) -> Result<u64> {
    let opts = SqliteConnectOptions::new()
        .filename(db)
        // Setup only: the timed steps below run on a database written normally.
        .pragma("synchronous", "OFF")
        .pragma("journal_mode", "WAL");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let now = pifleet_tests::harness::now_ms();
    let mut tx = pool.begin().await?;
    for i in 0..args.devices {
        let id = format!("bench-{i:05}");
        sqlx::query(
            "INSERT INTO devices (id, labels, enrolled_at, first_seen, last_seen, online, \
             agent_version, hostname, os, kernel, arch, model) VALUES \
             (?, ?, ?, ?, ?, 0, '0.1.0', ?, 'Debian GNU/Linux 12', '6.6.51+rpt-rpi-v8', \
             'aarch64', 'Raspberry Pi 4 Model B Rev 1.5')",
        )
        .bind(&id)
        .bind(format!(r#"{{"site":"s{}","ring":"r{}"}}"#, i % 50, i % 3))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after, \
             public_key_alg, public_key) VALUES (?, ?, ?, ?, 'ecdsa-p256', ?)",
        )
        .bind(format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15))
        .bind(&id)
        .bind(now)
        .bind(now + 90 * 86_400_000)
        .bind(vec![4u8; 65])
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let minutes = args.days * 24 * 60;
    let start = now - minutes as i64 * 60_000;
    for i in 0..args.sampled.min(args.devices) {
        let id = format!("bench-{i:05}");
        let mut tx = pool.begin().await?;
        sqlx::query(concat!(
            "WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i + 1 < ?) ",
            "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, ",
            "load15, mem_total, mem_used, swap_total, swap_used, temp_c, throttled, uptime_s, ",
            "spool_dropped, spool_backlog, disks, nets, disk_used, disk_total, net_rx, net_tx) ",
            "SELECT ?, i + 1, ? + i * 60000, ? + i * 60000 + 40, (i * 7 % 1000) / 10.0, ",
            "(i % 400) / 100.0, (i % 300) / 100.0, (i % 200) / 100.0, 4102144000, ",
            "1500000000 + (i * 4099 % 500000000), 104853504, i % 1000, 45.0 + (i % 200) / 10.0, ",
            "0, i * 60, 0, 0, ",
            "'[{\"mount\":\"/\",\"fs\":\"ext4\",\"total_bytes\":31254839296,\"used_bytes\":' ",
            "|| (9000000000 + i * 1000) || '},{\"mount\":\"/boot/firmware\",\"fs\":\"vfat\",",
            "\"total_bytes\":535805952,\"used_bytes\":66060288}]', ",
            "'[{\"iface\":\"eth0\",\"rx_bytes\":' || (i * 123457) || ',\"tx_bytes\":' ",
            "|| (i * 34567) || '}]', 9066060288 + i * 1000, 31790645248, i * 123457, i * 34567 ",
            "FROM m"
        ))
        .bind(minutes as i64)
        .bind(&id)
        .bind(start)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE devices SET last_seq = ? WHERE id = ?")
            .bind(minutes as i64)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let samples: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&pool)
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(u64::try_from(samples).unwrap_or(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.work.exists() {
        bail!("{} exists; give a new directory", args.work.display());
    }
    std::fs::create_dir_all(&args.work)?;
    let w = args.work.canonicalize()?;
    let data = w.join("data");
    let ctl = bin("pifleet-controller")?;
    run(
        Command::new(&ctl)
            .args(["init", "--hostname", "localhost", "--data-dir"])
            .arg(&data),
        "init",
    )?;
    let db = data.join("pifleet.db");
    let t = Instant::now();
    let samples = fill(&db, &args).await?;
    println!(
        "filled {} devices, {samples} samples in {:.1} s",
        args.devices,
        t.elapsed().as_secs_f64()
    );
    let db_size = size(&db);

    // Each step's output is deleted once measured, so the run needs about three times the
    // database's size free (the database, `create`'s staging copy, the backup), not seven.
    let rm = |p: &Path| {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    };
    // The anchor: what the sqlite3 shell does for the database alone.
    let anchor_copy = w.join("anchor.db");
    let (anchor_backup, _) = run(
        Command::new("sqlite3")
            .arg(&db)
            .arg(format!(".backup '{}'", anchor_copy.display())),
        "sqlite3 .backup",
    )?;
    let anchor_size = size(&anchor_copy);
    // `backup create` checks its copy before packing it: the same on the anchor's copy.
    let (anchor_check, said) = run(
        Command::new("sqlite3")
            .arg(&anchor_copy)
            .arg("PRAGMA integrity_check"),
        "sqlite3 integrity_check of the .backup copy",
    )?;
    if said != "ok" {
        bail!("integrity_check of the anchor's .backup copy: {said}");
    }
    let anchor_backup_checked = anchor_backup + anchor_check;
    rm(&anchor_copy);
    let cp_copy = w.join("anchor-cp.db");
    let t = Instant::now();
    std::fs::copy(&db, &cp_copy)?;
    let (_, said) = run(
        Command::new("sqlite3")
            .arg(&cp_copy)
            .arg("PRAGMA integrity_check"),
        "sqlite3 integrity_check",
    )?;
    let anchor_restore = t.elapsed();
    rm(&cp_copy);
    if said != "ok" {
        bail!("integrity_check of the anchor copy: {said}");
    }

    let out = w.join("backups");
    let (create_plain, plain) = run(
        Command::new(&ctl)
            .args(["backup", "create", "--data-dir"])
            .arg(&data)
            .arg("--out")
            .arg(&out),
        "backup create",
    )?;
    let plain_size = size(Path::new(&plain));
    let (verify_plain, _) = run(
        Command::new(&ctl).args(["backup", "verify", &plain]),
        "backup verify",
    )?;
    let restored = w.join("restored");
    let (restore_plain, _) = run(
        Command::new(&ctl)
            .args([
                "backup",
                "restore",
                &plain,
                "--accept-lost-revocations",
                "--data-dir",
            ])
            .arg(&restored),
        "backup restore",
    )?;
    rm(&restored);
    rm(Path::new(&plain));

    let identity = age::x25519::Identity::generate();
    let id_file = w.join("identity.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, identity.to_string().expose_secret())?;
    }
    // A second later, so the encrypted backup gets a name of its own.
    std::thread::sleep(Duration::from_millis(1100));
    let (create_enc, enc) = run(
        Command::new(&ctl)
            .args(["backup", "create", "--data-dir"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--recipient")
            .arg(identity.to_public().to_string()),
        "backup create --recipient",
    )?;
    let enc_size = size(Path::new(&enc));
    let (verify_enc, _) = run(
        Command::new(&ctl)
            .args(["backup", "verify", &enc, "--identity"])
            .arg(&id_file),
        "backup verify --identity",
    )?;
    let (restore_enc, _) = run(
        Command::new(&ctl)
            .args([
                "backup",
                "restore",
                &enc,
                "--accept-lost-revocations",
                "--identity",
            ])
            .arg(&id_file)
            .arg("--data-dir")
            .arg(&restored),
        "backup restore --identity",
    )?;
    rm(&restored);
    rm(Path::new(&enc));
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let ratio = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64());
    println!();
    println!(
        "database: {} devices, {samples} samples, {} ({} bytes)",
        args.devices,
        mib(db_size),
        db_size
    );
    println!(
        "backups: plain {} ({plain_size} bytes), encrypted {} ({enc_size} bytes); \
         sqlite3 .backup copy {} ({anchor_size} bytes)",
        mib(plain_size),
        mib(enc_size),
        mib(anchor_size),
    );
    println!();
    println!("| step | pifleet | anchor (sqlite3) | anchor time | ratio |");
    println!("|---|---|---|---|---|");
    for (step, ours, anchor_name, anchor) in [
        (
            "backup create (plain)",
            create_plain,
            "`.backup`",
            anchor_backup,
        ),
        (
            "backup create (plain)",
            create_plain,
            "`.backup` + `integrity_check`",
            anchor_backup_checked,
        ),
        (
            "backup create (age)",
            create_enc,
            "`.backup` + `integrity_check`",
            anchor_backup_checked,
        ),
        (
            "backup verify (plain)",
            verify_plain,
            "cp + `integrity_check`",
            anchor_restore,
        ),
        (
            "backup verify (age)",
            verify_enc,
            "cp + `integrity_check`",
            anchor_restore,
        ),
        (
            "backup restore (plain)",
            restore_plain,
            "cp + `integrity_check`",
            anchor_restore,
        ),
        (
            "backup restore (age)",
            restore_enc,
            "cp + `integrity_check`",
            anchor_restore,
        ),
    ] {
        println!(
            "| {step} | {} | {anchor_name} | {} | {} |",
            s(ours),
            s(anchor),
            ratio(ours, anchor)
        );
    }
    Ok(())
}
