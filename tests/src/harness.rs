//! Process handles for the controller and agents, and condition waits (never fixed sleeps).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tempfile::TempDir;

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIFLEET_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a built binary; fails with a clear message if it has not been built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found: build the binaries first with `cargo build --workspace`",
            p.display()
        );
    }
    Ok(p)
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Merges TOML `overrides` into the config file at `path` (tables merged key by key).
pub fn merge_config(path: &Path, overrides: &str) -> Result<()> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut cfg: toml::Table = std::fs::read_to_string(path)?.parse()?;
    merge(&mut cfg, overrides.parse()?);
    std::fs::write(path, toml::to_string(&cfg)?)?;
    Ok(())
}

/// A running (or stopped) controller with its own temporary data dir.
#[derive(Debug)]
pub struct Controller {
    pub tmp: TempDir,
    pub data: PathBuf,
    pub mqtt: SocketAddr,
    pub https: SocketAddr,
    /// The first admin's one-time password, as `init` printed it.
    pub admin_password: String,
    child: Option<std::process::Child>,
    starts: u32,
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
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        let out = Command::new(bin("pifleet-controller")?)
            .args(["init", "--hostname", "localhost", "--data-dir"])
            .arg(&data)
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
        let mut c = Self {
            tmp,
            data,
            admin_password,
            mqtt: "127.0.0.1:0".parse()?,
            https: "127.0.0.1:0".parse()?,
            child: None,
            starts: 0,
        };
        c.serve().await?;
        Ok(c)
    }

    /// Starts `serve` (again), keeping the previous ports when restarting so agents find
    /// it where they were enrolled.
    pub async fn serve(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.data.join("serve.json"));
        self.starts += 1;
        let log = std::fs::File::create(self.log_path_n(self.starts))?;
        let child = Command::new(bin("pifleet-controller")?)
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .arg("--mqtt-listen")
            .arg(self.mqtt.to_string())
            .arg("--https-listen")
            .arg(self.https.to_string())
            .env("RUST_LOG", "info,rumqttd=off,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
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
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
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

    fn log_path_n(&self, n: u32) -> PathBuf {
        self.tmp.path().join(format!("controller-{n}.log"))
    }

    /// Every log line of every run of this controller.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path_n(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The running process, if any.
    pub fn child(&self) -> Option<&std::process::Child> {
        self.child.as_ref()
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
            let status = self.child.as_mut()?.try_wait().ok()?;
            if let Some(s) = status {
                self.child = None;
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, Signal::SIGTERM);
        c.wait().ok()
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

/// An enrolled agent with its own config dir.
#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub dir: PathBuf,
    _tmp: TempDir,
    child: Option<std::process::Child>,
    starts: u32,
}

impl Agent {
    /// Enrolls a new agent as `id` with a fresh token; telemetry every `interval_s` seconds.
    pub fn enroll(ctl: &Controller, id: &str, interval_s: u32) -> Result<Self> {
        let token = ctl.token(None, "10m")?;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join(id);
        let out = Command::new(bin("pifleet-agent")?)
            .args(["enroll", "--controller", &ctl.url(), "--token", &token])
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .args(["--device-id", id, "--interval", &interval_s.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("enroll {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            id: id.to_owned(),
            dir,
            _tmp: tmp,
            child: None,
            starts: 0,
        })
    }

    /// Starts `pifleet-agent run`.
    pub fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("agent-{}.log", self.starts)))?;
        let child = Command::new(bin("pifleet-agent")?)
            .arg("run")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("device.key")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Every log line of every run of this agent.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("agent-{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("")
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, Signal::SIGTERM);
        c.wait().ok()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the agent's spool `state` file records (mirrors `State` in `agent/src/spool/state.rs`:
/// `PFST` magic, CRC32 of the body, then this struct in postcard). Read it only while the
/// agent is stopped: `close()` (a clean SIGTERM) writes `clean_next`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SpoolState {
    /// Every seq at or below it is acknowledged or dropped.
    pub floor: u64,
    /// No seq at or above it was ever handed out.
    pub reserved_until: u64,
    /// The first seq of the current boot.
    pub min_next: u64,
    pub boot_id: String,
    /// Set only by a clean shutdown: the next seq the agent will hand out.
    pub clean_next: Option<u64>,
}

impl Agent {
    /// The agent's spool directory (`spool` next to `agent.toml`, the enrollment default).
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Every sample record in the spool's segment files, acknowledged or not, oldest first
    /// (the on-disk format of `agent/src/spool/segment.rs`: an 8-byte header, then records
    /// `[u32 len LE][u32 crc32 LE][postcard Sample]`). Safe while the agent runs: records are
    /// appended with one write(2) each, and a torn tail or a segment deleted meanwhile just
    /// ends the scan of that file. A running agent always keeps its newest segment, so the
    /// last sample is the newest one it produced (also after it stopped).
    pub fn spool_samples(&self) -> Vec<pifleet_shared::proto::v1::Sample> {
        let mut out = Vec::new();
        for seg in self.spool_segments() {
            let Ok(bytes) = std::fs::read(&seg) else {
                continue;
            };
            let mut rest = bytes.get(8..).unwrap_or_default();
            while rest.len() >= 8 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(body) = rest.get(8..8 + len) else {
                    break;
                };
                match postcard::from_bytes(body) {
                    Ok(s) => out.push(s),
                    Err(_) => break,
                }
                rest = &rest[8 + len..];
            }
        }
        out
    }

    /// Segment files of the spool, oldest first.
    fn spool_segments(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else {
            return Vec::new();
        };
        let mut segs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect();
        segs.sort();
        segs
    }

    /// Sequence numbers of [`Agent::spool_samples`].
    pub fn spool_seqs(&self) -> Vec<u64> {
        self.spool_samples().iter().map(|s| s.seq).collect()
    }

    /// Writes `samples` (ascending seqs, above everything in the spool) as a new segment in
    /// the spool of a *stopped* agent, in the agent's own format: to the agent they look like
    /// samples it took during a long outage. Lets a test build a backlog of thousands of
    /// samples without waiting for them at 1 sample/s.
    pub fn spool_inject(&self, samples: &[pifleet_shared::proto::v1::Sample]) -> Result<()> {
        let Some(first) = samples.first() else {
            return Ok(());
        };
        let mut bytes = b"PFSG".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        for s in samples {
            let body = postcard::to_allocvec(s)?;
            bytes.extend_from_slice(&u32::try_from(body.len())?.to_le_bytes());
            bytes.extend_from_slice(&crc32(&body).to_le_bytes());
            bytes.extend_from_slice(&body);
        }
        let path = self.spool_dir().join(format!("seg-{:020}.log", first.seq));
        std::fs::write(&path, bytes)?;
        Ok(())
    }

    /// The highest seq in the spool (see [`Agent::spool_seqs`]); 0 if none.
    pub fn spool_max_seq(&self) -> u64 {
        self.spool_seqs().last().copied().unwrap_or(0)
    }

    /// The spool's `state` file, if present and intact.
    pub fn spool_state(&self) -> Option<SpoolState> {
        let bytes = std::fs::read(self.spool_dir().join("state")).ok()?;
        let body = bytes.strip_prefix(b"PFST".as_slice())?.get(4..)?;
        postcard::from_bytes(body).ok()
    }

    /// Sets `[mqtt] backoff_max_s` in `agent.toml` (the reconnect backoff cap), so tests
    /// that restart the controller do not wait out a long backoff.
    pub fn set_backoff_max(&self, secs: u64) -> Result<()> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)?;
        let mut found = false;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("backoff_max_s") {
                    found = true;
                    format!("backoff_max_s = {secs}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if !found {
            bail!("no backoff_max_s in {}:\n{text}", path.display());
        }
        std::fs::write(&path, new.join("\n") + "\n")?;
        Ok(())
    }

    /// The JSON log events of every run whose `message` is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

/// CRC-32 (IEEE, reflected, as crc32fast computes it), bitwise: only for small test files.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl Agent {
    /// Replaces the `[commands]` section of `agent.toml` (with every `[commands.…]` sub-table,
    /// such as `[commands.scripts.<name>]`) by `section`, TOML text that starts with
    /// `[commands]`. Call it while the agent is stopped.
    pub fn set_commands_toml(&self, section: &str) -> Result<()> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)?;
        let mut kept = Vec::new();
        let mut in_commands = false;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with('[') {
                let name = t.trim_start_matches('[').trim_start();
                in_commands = name.starts_with("commands]")
                    || name.starts_with("commands.")
                    || name.starts_with("commands ]");
            }
            if !in_commands {
                kept.push(line);
            }
        }
        let mut new = kept.join("\n");
        new.push_str("\n\n");
        new.push_str(section.trim());
        new.push('\n');
        std::fs::write(&path, new)?;
        Ok(())
    }

    /// Sets `[controller] mqtt_port` in `agent.toml` (to point the agent at another broker).
    pub fn set_mqtt_port(&self, port: u16) -> Result<()> {
        let path = self.config();
        let text = std::fs::read_to_string(&path)?;
        let mut found = false;
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("mqtt_port") {
                    found = true;
                    format!("mqtt_port = {port}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if !found {
            bail!("no mqtt_port in {}:\n{text}", path.display());
        }
        std::fs::write(&path, new.join("\n") + "\n")?;
        Ok(())
    }
}

/// Fake `systemctl`, `journalctl` and `reboot` in a directory of their own (to be used as the
/// agent's `[commands] path`): each appends one line `<program> <args…>` to a shared calls
/// file and prints a fixed, known output.
#[derive(Debug, Clone)]
pub struct FakeBin {
    /// The directory holding the fakes.
    pub dir: PathBuf,
    /// Where every call is recorded, one line per call.
    pub calls: PathBuf,
}

/// What the fake `journalctl` prints (whatever its arguments).
pub const FAKE_JOURNAL: &str = "2025-01-01T00:00:00+0000 pi kiosk[1]: started\n\
    2025-01-01T00:00:01+0000 pi kiosk[1]: serving on :8080\n";

/// Writes the fakes into `dir` (created if needed).
pub fn fake_bin(dir: &Path) -> Result<FakeBin> {
    std::fs::create_dir_all(dir)?;
    let calls = dir.join("calls.log");
    std::fs::write(&calls, "")?;
    let journal_lines: String = FAKE_JOURNAL
        .lines()
        .map(|l| format!("echo '{l}'\n"))
        .collect();
    let fakes = [
        ("systemctl", "echo \"fake systemctl $*\"\n".to_owned()),
        ("journalctl", journal_lines),
        ("reboot", "echo \"fake reboot\"\n".to_owned()),
    ];
    let fb = FakeBin {
        dir: dir.to_owned(),
        calls,
    };
    for (name, out) in fakes {
        fb.write_script(name, &out)?;
    }
    Ok(fb)
}

impl FakeBin {
    /// Writes an executable `#!/bin/sh` script `name` in the fake directory that first records
    /// `<name> <args…>` in the calls file, then runs `body`. Returns its path.
    pub fn write_script(&self, name: &str, body: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&tmp)?;
            write!(
                f,
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}",
                self.calls.display()
            )?;
            f.sync_all()?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        // Renamed into place: never executed while still open for writing (ETXTBSY).
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Every recorded call made for a command, in order. The agent's own reads of its
    /// allowlisted units' states (`systemctl show …`, every few seconds and after service
    /// commands) are left out: they are not commands.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("systemctl show "))
            .map(str::to_owned)
            .collect()
    }
}
