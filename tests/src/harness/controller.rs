//! The controller process: `init` into a temporary data dir, `serve` on ephemeral ports read
//! from `serve.json`, restarts on the same ports, the CLI, and the database read and locked
//! from outside.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tempfile::TempDir;

use super::process::Runs;
use super::{bin, merge_config};

/// A running (or stopped) controller with its own temporary data dir.
#[derive(Debug)]
pub struct Controller {
    pub tmp: TempDir,
    pub data: PathBuf,
    pub mqtt: SocketAddr,
    pub https: SocketAddr,
    /// The first admin's one-time password, as `init` printed it.
    pub admin_password: String,
    /// The open-file limit `serve` runs under (soft and hard), when set; otherwise the
    /// test's own.
    pub nofile: Option<u64>,
    runs: Runs,
}

#[derive(serde::Deserialize)]
struct Bound {
    mqtt: SocketAddr,
    https: SocketAddr,
    pid: u32,
}

impl Controller {
    /// `init` a new data dir and `serve` it on ephemeral loopback ports.
    pub async fn start() -> Result<Self> {
        Self::start_with("").await
    }

    /// Like [`Controller::start`], with `overrides` (TOML, e.g. `"[auth]\nrate_burst = 3"`)
    /// merged into the generated config.toml before the first `serve`.
    pub async fn start_with(overrides: &str) -> Result<Self> {
        Self::start_init(&[], overrides).await
    }

    /// Like [`Controller::start_with`], passing `init_args` (e.g. `--ca-cert FILE`) to
    /// `init`.
    pub async fn start_init(init_args: &[&std::ffi::OsStr], overrides: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        let out = Command::new(bin("pifleet-controller")?)
            .args(["init", "--hostname", "localhost", "--data-dir"])
            .arg(&data)
            .args(init_args)
            .output()?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let admin_password = stdout
            .lines()
            .find_map(|l| l.split("one-time password: ").nth(1))
            .map(|p| p.trim().to_owned())
            .context("init printed no one-time admin password")?;
        if !overrides.is_empty() {
            merge_config(&data.join("config.toml"), overrides)?;
        }
        let runs = Runs::new(tmp.path().to_owned(), "controller");
        let mut c = Self {
            tmp,
            data,
            admin_password,
            nofile: None,
            mqtt: "127.0.0.1:0".parse()?,
            https: "127.0.0.1:0".parse()?,
            runs,
        };
        c.serve().await?;
        Ok(c)
    }

    /// A further controller on the same database (scale-out mode): a copy of this one's data
    /// dir (its keys), `overrides` merged into its configuration, serving on its own ports.
    pub async fn replica(&self, overrides: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.data)
            .arg(&data)
            .output()?;
        if !out.status.success() {
            bail!(
                "copying the data dir: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(data.join("serve.json"));
        if !overrides.is_empty() {
            merge_config(&data.join("config.toml"), overrides)?;
        }
        let runs = Runs::new(tmp.path().to_owned(), "controller");
        let mut c = Self {
            tmp,
            data,
            admin_password: self.admin_password.clone(),
            nofile: None,
            mqtt: "127.0.0.1:0".parse()?,
            https: "127.0.0.1:0".parse()?,
            runs,
        };
        c.serve().await?;
        Ok(c)
    }

    /// Starts `serve` (again), keeping the previous ports when restarting so agents find
    /// it where they were enrolled.
    pub async fn serve(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.data.join("serve.json"));
        let mut cmd = match self.nofile {
            // util-linux's prlimit: the limit is set before the controller starts.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("pifleet-controller")?);
                c
            }
            None => Command::new(bin("pifleet-controller")?),
        };
        self.runs.spawn(
            cmd.args(["serve", "--data-dir"])
                .arg(&self.data)
                .arg("--mqtt-listen")
                .arg(self.mqtt.to_string())
                .arg("--https-listen")
                .arg(self.https.to_string())
                .env("RUST_LOG", "info,sqlx=warn"),
        )?;
        let state = self.data.join("serve.json");
        let start = Instant::now();
        let bound: Bound = loop {
            if let Some(b) = std::fs::read(&state)
                .ok()
                .and_then(|text| serde_json::from_slice(&text).ok())
            {
                break b;
            }
            // A controller that refuses its configuration exits at once: say so now.
            if let Some(status) = self
                .runs
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.runs.child = None;
                bail!(
                    "the controller exited at start-up ({status}):\n{}",
                    self.log()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the controller did not start within 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = bound.pid;
        self.mqtt = bound.mqtt;
        self.https = bound.https;
        Ok(())
    }

    /// Every log line of every run of this controller.
    pub fn log(&self) -> String {
        self.runs.log()
    }

    /// The running process, if any.
    pub fn child(&self) -> Option<&std::process::Child> {
        self.runs.child.as_ref()
    }

    /// Whether the controller process is still alive (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        let Some(child) = self.child() else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state != "Z" && state != "X")
    }

    /// Waits up to `timeout` for the controller to exit by itself; its exit status, or
    /// `None` if it is still running (or was not started).
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let status = self.runs.child.as_mut()?.try_wait().ok()?;
            if let Some(s) = status {
                self.runs.child = None;
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        self.runs.kill9();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.runs.stop()
    }

    /// Runs a controller CLI command against this data dir.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(bin("pifleet-controller")?)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()?)
    }

    /// Creates an enrollment token (`token create`), optionally fixing the device id.
    pub fn token(&self, name: Option<&str>, ttl: &str) -> Result<String> {
        let mut args = vec!["token", "create", "--ttl", ttl];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        let out = self.cli(&args)?;
        if !out.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `device revoke ID`.
    pub fn revoke(&self, id: &str) -> Result<()> {
        let out = self.cli(&["device", "revoke", id])?;
        if !out.status.success() {
            bail!("revoke: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The HTTPS base URL agents enroll with.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    /// A read-only connection pool on the controller's database.
    pub async fn db(&self) -> Result<SqlitePool> {
        let opts = SqliteConnectOptions::new()
            .filename(self.data.join("pifleet.db"))
            .read_only(true);
        Ok(SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?)
    }

    /// A writable pool on the database (for tests that tamper with it or seed it while the
    /// controller runs).
    pub async fn db_rw(&self) -> Result<SqlitePool> {
        let opts = SqliteConnectOptions::new()
            .filename(self.data.join("pifleet.db"))
            .busy_timeout(Duration::from_secs(10));
        Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?)
    }

    /// Takes the database's write lock from another connection, as another process (a
    /// long `sqlite3` session, a careless backup) would, and holds it until released.
    pub async fn hold_write_lock(&self) -> Result<WriteLock> {
        let pool = self.db_rw().await?;
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriteLock { pool, conn })
    }

    /// Telemetry sequence numbers stored for `device`, ascending.
    pub async fn seqs(&self, device: &str) -> Result<Vec<i64>> {
        let db = self.db().await?;
        let v = sqlx::query_scalar("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq")
            .bind(device)
            .fetch_all(&db)
            .await?;
        db.close().await;
        Ok(v)
    }

    /// The `online` flag (1 or 0) the controller's database holds for `device`; `None` if
    /// the device or the database cannot be read.
    pub async fn online(&self, device: &str) -> Option<i64> {
        let db = self.db().await.ok()?;
        let v = sqlx::query_scalar("SELECT online FROM devices WHERE id = ?")
            .bind(device)
            .fetch_one(&db)
            .await
            .ok();
        db.close().await;
        v
    }

    /// Sends `ping` to `device` with `cmd send` and waits until it succeeded; returns the
    /// command's id. Panics with both logs when it does not within `timeout`.
    pub async fn ping(&self, device: &str, timeout: Duration) -> Result<String> {
        let out = Command::new(bin("pifleet-controller")?)
            .args(["cmd", "send", "--data-dir"])
            .arg(&self.data)
            .args(["--device", device, "ping"])
            .output()?;
        if !out.status.success() {
            bail!("cmd send: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout
            .split('\t')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        super::wait_for(timeout, &format!("ping {id} to {device} succeeded"), || {
            let id = id.clone();
            async move { (self.command_status(&id).await.as_deref() == Some("succeeded")).then_some(()) }
        })
        .await?;
        Ok(id)
    }

    /// A command's status in the database; `None` if it or the database cannot be read.
    pub async fn command_status(&self, id: &str) -> Option<String> {
        let db = self.db().await.ok()?;
        let v = sqlx::query_scalar("SELECT status FROM commands WHERE id = ?")
            .bind(id)
            .fetch_optional(&db)
            .await
            .ok()
            .flatten();
        db.close().await;
        v
    }

    /// The CA certificate path (for clients in tests).
    pub fn ca_path(&self) -> PathBuf {
        self.data.join("ca.crt")
    }
}

/// The database's write lock, held by [`Controller::hold_write_lock`].
#[derive(Debug)]
pub struct WriteLock {
    pool: SqlitePool,
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
}

impl WriteLock {
    /// Gives the lock back (its transaction is rolled back).
    pub async fn release(mut self) -> Result<()> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        drop(self.conn);
        self.pool.close().await;
        Ok(())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
    }
}
