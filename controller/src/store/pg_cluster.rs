//! A throwaway PostgreSQL cluster for tests: Debian's server binaries, a temp dir, a random
//! loopback port and a random password. Nothing outlives the test process: guardian processes
//! (`flock`, waiting for a lock this process holds) stop the cluster and removes its directory once the test process is gone, however it
//! ends (a SIGKILL included), which also covers [`shared`], whose `Drop` never runs.
//!
//! PostgreSQL refuses to run as root; as root (CI) every server command runs as the
//! `postgres` user through `runuser`.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use sqlx::Connection as _;

/// Where Debian installs PostgreSQL's server binaries, one directory per major version.
const PG_LIB: &str = "/usr/lib/postgresql";
/// The cluster's superuser.
const USER: &str = "pifleet";
/// How long a connection, a start or a stop may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong starting or using a cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "PostgreSQL is not installed (no {PG_LIB}/<version>/bin/initdb): install the Debian \
         package `postgresql` (apt-get install -y postgresql; scripts/deps.sh does it)"
    )]
    NotInstalled,
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as: install the \
         Debian package `postgresql`, which creates it"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{0} timed out")]
    Timeout(String),
    #[error("database name {0:?}: use 1 to 63 of a-z, 0-9 and _")]
    BadName(String),
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgClusterError {
    let what = what.into();
    move |source| PgClusterError::Io { what, source }
}

/// One running (or stopped) cluster; `Drop` stops it and removes its directory.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    password: String,
    /// Run server commands as `postgres` (we are root).
    as_postgres: bool,
    /// Held while this process lives (the kernel lets go of it when the process ends, also
    /// on SIGKILL); the guardians wait for it.
    alive: Option<nix::fcntl::Flock<std::fs::File>>,
    /// Stop the cluster, then remove `dir`, once `alive` is let go.
    guardians: Vec<Child>,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

static SHARED: tokio::sync::OnceCell<PgCluster> = tokio::sync::OnceCell::const_new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The cluster every test of this process shares, started by the first caller.
pub async fn shared() -> Result<&'static PgCluster, PgClusterError> {
    SHARED.get_or_try_init(PgCluster::start).await
}

impl PgCluster {
    /// Creates and starts a new cluster.
    pub async fn start() -> Result<Self, PgClusterError> {
        let bin = server_bin()?;
        let as_postgres = nix::unistd::geteuid().is_root();
        let owner = if as_postgres {
            Some(
                nix::unistd::User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or(PgClusterError::NoPostgresUser)?,
            )
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pifleet-pg-")
            .tempdir()
            .map_err(io("creating the cluster's temp dir"))?
            .keep();
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            password: rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(32)
                .map(char::from)
                .collect(),
            as_postgres,
            alive: None,
            guardians: Vec::new(),
        };
        // From here on `Drop` cleans up whatever a failure leaves behind.
        cluster.spawn_guardians()?;
        let pwfile = cluster.dir.join("pwfile");
        std::fs::write(&pwfile, &cluster.password).map_err(io("writing the password file"))?;
        if let Some(user) = &owner {
            for path in [&cluster.dir, &pwfile] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(io(format!("chown {} to postgres", path.display())))?;
            }
        }
        let mut initdb = cluster.server_command("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-A",
                "scram-sha-256",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run("initdb", initdb).await?;
        std::fs::remove_file(&pwfile).map_err(io("removing the password file"))?;
        // The port is free when picked but may be taken before the server binds it.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(PgClusterError::Timeout("starting PostgreSQL".into())))
    }

    /// `postgres://pifleet:PASSWORD@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (what `pgrep -f` finds the server by).
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, PgClusterError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(PgClusterError::BadName(name.to_owned()));
        }
        let mut conn =
            tokio::time::timeout(TIMEOUT, sqlx::PgConnection::connect(&self.url("postgres")))
                .await
                .map_err(|_| PgClusterError::Timeout("connecting to PostgreSQL".into()))??;
        // Checked above to need no quoting beyond the quotes.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(self.url(name))
    }

    /// Creates a database no other call of this process has used and returns its URL.
    pub async fn fresh_database(&self) -> Result<String, PgClusterError> {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("t{}_{n}", std::process::id()))
            .await
    }

    /// Stops the server (`pg_ctl stop -m fast`), keeping its data.
    pub async fn stop(&self) -> Result<(), PgClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "stop", "-m", "fast"]);
        run("pg_ctl stop", cmd).await
    }

    /// Starts the server again on the same data and port. A postmaster killed a moment ago
    /// may have left backends still exiting; the start is retried until they are gone.
    pub async fn start_again(&self) -> Result<(), PgClusterError> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match self.pg_ctl_start().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// One `pg_ctl start`; a failure carries the end of the server's log.
    async fn pg_ctl_start(&self) -> Result<(), PgClusterError> {
        let log = self.dir.join("log");
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("start")
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
                 -c max_connections=300 -c fsync=on",
                self.port,
                self.dir.display()
            ));
        match run("pg_ctl start", cmd).await {
            Err(PgClusterError::Command {
                what,
                status,
                mut output,
            }) => {
                let text = std::fs::read(&log).unwrap_or_default();
                let tail = &text[text.len().saturating_sub(2000)..];
                output.push_str(&String::from_utf8_lossy(tail));
                Err(PgClusterError::Command {
                    what,
                    status,
                    output,
                })
            }
            other => other,
        }
    }

    /// Kills the postmaster with SIGKILL (a crash, for failure tests) and waits until it is
    /// gone; its backends notice and exit by themselves.
    pub async fn kill(&self) -> Result<(), PgClusterError> {
        let pid_file = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(io("reading postmaster.pid"))?;
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| PgClusterError::Io {
                what: "postmaster.pid".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no pid"),
            })?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| PgClusterError::Io {
            what: format!("killing postmaster {pid}"),
            source: e.into(),
        })?;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        // A dead process may linger as a zombie until reaped; it has no command line then.
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
            if tokio::time::Instant::now() >= deadline {
                return Err(PgClusterError::Timeout(format!("postmaster {pid} exiting")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A server binary, run as `postgres` when we are root.
    fn server_command(&self, program: &str) -> tokio::process::Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            tokio::process::Command::new(path)
        };
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Two `flock` (util-linux) processes, commands as argv: both wait for a shared lock
    /// on `dir/.alive`, which this process holds exclusively until it ends; then one stops
    /// the server (it holds `dir/.stopping` from the start) and the other, waiting for
    /// `.stopping`, removes the directory after it. Each has its own process group, so a
    /// Ctrl-C or a kill of the test's process group spares them.
    fn spawn_guardians(&mut self) -> Result<(), PgClusterError> {
        let alive = self.dir.join(".alive");
        let stopping = self.dir.join(".stopping");
        let file = std::fs::File::create(&alive).map_err(io("creating the cluster's lock"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking the cluster's lock")(e.into()))?;
        self.alive = Some(lock);
        let mut stop = std::process::Command::new("flock");
        stop.arg(&stopping).args(["flock", "--shared"]).arg(&alive);
        if self.as_postgres {
            stop.args(["runuser", "-u", "postgres", "--"]);
        }
        // The data directory through the environment: only the server's own processes name
        // it on their command line (the tests look for them there).
        stop.arg(self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate"])
            .env("PGDATA", self.data());
        let mut remove = std::process::Command::new("flock");
        remove
            .args(["--shared"])
            .arg(&alive)
            .arg("flock")
            .arg(&stopping)
            .args(["rm", "-rf"])
            .arg(&self.dir);
        for cmd in [&mut stop, &mut remove] {
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(io(
                    "starting the cluster's guardian (flock, from util-linux)",
                ))?;
            self.guardians.push(child);
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let path = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            } else {
                std::process::Command::new(path)
            };
            let _ = cmd
                .arg("-D")
                .arg(&data)
                .args(["-w", "stop", "-m", "immediate"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Letting go of the lock lets the guardians finish (with nothing left to do).
        drop(self.alive.take());
        for mut guardian in self.guardians.drain(..) {
            let _ = guardian.wait();
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` in it.
fn server_bin() -> Result<PathBuf, PgClusterError> {
    let Ok(entries) = std::fs::read_dir(PG_LIB) else {
        return Err(PgClusterError::NotInstalled);
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or(PgClusterError::NotInstalled)
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16, PgClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("picking a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("picking a free port"))?
        .port())
}

/// Runs a command to completion within [`TIMEOUT`]; a failure carries its output.
async fn run(what: &str, mut cmd: tokio::process::Command) -> Result<(), PgClusterError> {
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| PgClusterError::Timeout(what.into()))?
        .map_err(io(format!("running {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(PgClusterError::Command {
        what: what.into(),
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

#[cfg(test)]
mod tests;
