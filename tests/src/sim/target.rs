//! What the simulated devices connect to: a controller someone else runs, a controller the
//! simulator runs itself (so a storm can kill -9 it and start it again on the same ports),
//! or Debian's Mosquitto configured as a careful user would, for a side-by-side comparison.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pifleet_controller::datadir::DataDir;

/// How long a (re)started controller or broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(serde::Deserialize)]
struct Bound {
    https: SocketAddr,
    mqtt: SocketAddr,
    pid: u32,
}

/// A controller's serve state (`serve.json`), if it is running.
fn bound(dd: &DataDir) -> Option<Bound> {
    serde_json::from_slice(&std::fs::read(dd.serve_state()).ok()?).ok()
}

/// A process the simulator can kill and start again with the same command line.
#[derive(Debug)]
struct Owned {
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Owned {
    fn spawn(&mut self) -> Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| self.log.display().to_string())?;
        let child = Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(c.id()).unwrap_or(0);
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The broker the devices connect to.
#[derive(Debug)]
pub struct Target {
    pub name: &'static str,
    pub mqtt: SocketAddr,
    pub https: Option<SocketAddr>,
    pub pid: u32,
    dd: DataDir,
    owned: Option<Owned>,
    mosquitto: bool,
    _tmp: Option<tempfile::TempDir>,
}

fn free_port() -> Result<u16> {
    Ok(crate::harness::free_addr()?.port())
}

impl Target {
    /// A controller already running on `dd`.
    pub fn external(dd: &DataDir) -> Result<Self> {
        let b = bound(dd).context("is the controller running? (no serve.json in the data dir)")?;
        if !Path::new(&format!("/proc/{}", b.pid)).exists() {
            bail!(
                "{} names pid {}, which is not running: start the controller, or pass --spawn-controller",
                dd.serve_state().display(),
                b.pid
            );
        }
        Ok(Self {
            name: "pifleet",
            mqtt: b.mqtt,
            https: Some(b.https),
            pid: b.pid,
            dd: dd.clone(),
            owned: None,
            mosquitto: false,
            _tmp: None,
        })
    }

    /// No controller running (devices on a broker someone else runs, identities enrolled
    /// before): nothing to measure or stop.
    pub fn detached(dd: &DataDir) -> Self {
        Self {
            name: "external",
            mqtt: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: None,
            pid: 0,
            dd: dd.clone(),
            owned: None,
            mosquitto: false,
            _tmp: None,
        }
    }

    /// Starts `exe serve` on `dd` with fixed loopback ports it picks.
    pub fn spawn_controller(exe: &Path, dd: &DataDir) -> Result<Self> {
        let (mqtt, https) = (free_port()?, free_port()?);
        let root = dd.root().display().to_string();
        let mut owned = Owned {
            exe: exe.to_owned(),
            args: vec![
                "serve".into(),
                "--data-dir".into(),
                root,
                "--mqtt-listen".into(),
                format!("127.0.0.1:{mqtt}"),
                "--https-listen".into(),
                format!("127.0.0.1:{https}"),
            ],
            log: dd.root().join("sim-controller.log"),
            child: None,
        };
        let _ = std::fs::remove_file(dd.serve_state());
        let pid = owned.spawn()?;
        let mut t = Self {
            name: "pifleet",
            mqtt: SocketAddr::from(([127, 0, 0, 1], mqtt)),
            https: Some(SocketAddr::from(([127, 0, 0, 1], https))),
            pid,
            dd: dd.clone(),
            owned: Some(owned),
            mosquitto: false,
            _tmp: None,
        };
        t.wait_ready()?;
        Ok(t)
    }

    /// Starts Debian's Mosquitto with the controller's CA, server certificate and CRL.
    pub fn spawn_mosquitto(dd: &DataDir) -> Result<Self> {
        let exe = Path::new("/usr/sbin/mosquitto");
        if !exe.is_file() {
            bail!("/usr/sbin/mosquitto not found: install the Debian package mosquitto");
        }
        let tmp = tempfile::tempdir()?;
        let port = free_port()?;
        let conf = super::mosquitto::write_config(dd, tmp.path(), port)?;
        let owned = Owned {
            exe: exe.to_owned(),
            args: vec!["-c".into(), conf.display().to_string()],
            log: tmp.path().join("mosquitto.out"),
            child: None,
        };
        let mut t = Self {
            name: "mosquitto",
            mqtt: SocketAddr::from(([127, 0, 0, 1], port)),
            https: None,
            pid: 0,
            dd: dd.clone(),
            owned: Some(owned),
            mosquitto: true,
            _tmp: Some(tmp),
        };
        t.start()?;
        Ok(t)
    }

    fn start(&mut self) -> Result<()> {
        if !self.mosquitto {
            let _ = std::fs::remove_file(self.dd.serve_state());
        }
        let owned = self
            .owned
            .as_mut()
            .context("not started by the simulator")?;
        self.pid = owned.spawn()?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = if self.mosquitto {
                std::net::TcpStream::connect(self.mqtt).is_ok()
            } else {
                bound(&self.dd).is_some_and(|b| b.pid == self.pid)
            };
            if ready {
                return Ok(());
            }
            if let Some(c) = self.owned.as_mut().and_then(|o| o.child.as_mut())
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "{} exited at start ({status}); see {}",
                    self.name,
                    self.log().display()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not start listening in {START_TIMEOUT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where its output goes.
    pub fn log(&self) -> PathBuf {
        self.owned
            .as_ref()
            .map_or_else(|| self.dd.root().join("?"), |o| o.log.clone())
    }

    /// kill -9, then the same command line again; returns when it listens again.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        let owned = self.owned.as_mut().context(
            "a kill storm needs a controller the simulator runs: pass --spawn-controller",
        )?;
        owned.kill()?;
        self.start()
    }

    /// Stops what the simulator started (SIGTERM); leaves an external controller alone.
    pub fn stop(&mut self) {
        if let Some(o) = self.owned.as_mut() {
            o.stop();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}
