//! `pifleet-controller demo`: a throw-away controller with N real agent processes on this
//! machine, for a newcomer to see the whole path (enrollment, mTLS MQTT, SQLite) working.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::datadir::DataDir;
use crate::enroll::tokens::{self, TokenError};
use crate::serve::Bound;
use crate::setup::{self, SetupError};
use crate::store::Store;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of local agents to enroll and start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents: u16,
    /// Telemetry interval of the demo agents, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub interval: u32,
    /// Where to put the demo's files: a directory that does not exist yet (default: a new,
    /// private directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The pifleet-agent binary (default: next to this binary).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
}

/// Demo failures.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Runs the demo until Ctrl-C / SIGTERM.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let me = std::env::current_exe().map_err(io("locating this binary"))?;
    let bin_dir = me.parent().unwrap_or(Path::new(".")).to_path_buf();
    let agent_bin = args
        .agent_bin
        .clone()
        .unwrap_or_else(|| bin_dir.join("pifleet-agent"));
    if !agent_bin.exists() {
        return Err(DemoError::Failed(format!(
            "{} not found; build it first: cargo build --release --workspace",
            agent_bin.display()
        )));
    }
    let base = demo_dir(args.dir.as_deref())?;
    let data = base.join("controller");
    let report = setup::init(&data, &["localhost".to_owned()], None).await?;
    let dd = DataDir::new(&data);

    let log = std::fs::File::create(base.join("controller.log")).map_err(io("controller.log"))?;
    let mut controller = Command::new(&me)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting the controller"))?;
    let bound = wait_bound(&dd, &mut controller).await?;
    let url = format!("https://localhost:{}", bound.https.port());

    let store = Store::open(&dd.database(), false).await?;
    // Without a thermal zone (a VM, most laptops) the agents would report no temperature:
    // give each a file to read instead and move its value like a Pi's SoC would.
    let simulated = !has_thermal_zone();
    let mut agents: Vec<(String, Child)> = Vec::new();
    let mut temperatures: Vec<PathBuf> = Vec::new();
    for i in 1..=args.agents {
        let id = format!("demo-pi-{i}");
        let dir = base.join("agents").join(&id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let labels = [
            ("demo".to_owned(), "true".to_owned()),
            ("rack".to_owned(), ((i - 1) / 10 + 1).to_string()),
        ]
        .into();
        let spec = tokens::TokenSpec {
            ttl: Duration::from_secs(600),
            name: Some(id.clone()),
            labels,
            ..Default::default()
        };
        let token = tokens::create_token(&dd, &store, 600, &spec).await?;
        let config = dir.join("agent.toml");
        let status = Command::new(&agent_bin)
            .args(["enroll", "--controller", &url, "--token"])
            .arg(token.token.to_string())
            .arg("--config")
            .arg(&config)
            .args(["--device-id", &id, "--interval"])
            .arg(args.interval.to_string())
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(io("running pifleet-agent enroll"))?;
        if !status.success() {
            return Err(DemoError::Failed(format!(
                "enrolling {id} failed ({status})"
            )));
        }
        if simulated {
            let file = dir.join(TEMPERATURE_FILE);
            write_temperature(&file, simulated_temperature(temperatures.len(), 0.0))?;
            temperatures.push(file);
        }
        let bin = dir.join("bin");
        write_fake_systemd(&bin)?;
        configure_agent(&config, simulated, &bin)?;
        let log = std::fs::File::create(dir.join("agent.log")).map_err(io("agent.log"))?;
        let child = Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting pifleet-agent"))?;
        agents.push((id, child));
    }

    println!("pifleet demo is running.");
    println!();
    println!(
        "  controller   pid {}  https {}  mqtt mtls://127.0.0.1:{}",
        bound.pid,
        url,
        bound.mqtt.port()
    );
    println!("  data dir     {}", data.display());
    println!("  database     {}", dd.database().display());
    println!(
        "  logs         {}/controller.log, {}/agents/*/agent.log",
        base.display(),
        base.display()
    );
    for (id, child) in &agents {
        println!("  agent        {id}  pid {}", child.id().unwrap_or(0));
    }
    if simulated {
        println!(
            "  temperature  simulated: this machine has no thermal zone (agents/*/{TEMPERATURE_FILE})"
        );
    }
    println!(
        "  dashboard    {url}/  (its CA is {}/ca.crt: trust it, or accept the browser's warning)",
        data.display()
    );
    println!("  admin API    {url}/api/v1  (OpenAPI: {url}/api/v1/openapi.json)");
    println!(
        "  sign in as   {}  one-time password {}  (to be changed at first sign-in)",
        report.admin_name, report.admin_password
    );
    println!();
    println!(
        "  try:  {} device list --data-dir {}",
        me.display(),
        data.display()
    );
    println!(
        "        sqlite3 {} 'SELECT device_id, COUNT(*), MAX(seq) FROM telemetry GROUP BY 1'",
        dd.database().display()
    );
    println!();
    println!(
        "Press Ctrl-C to stop. The files stay in {} until you delete them.",
        base.display()
    );

    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    let started = std::time::Instant::now();
    let mut heat = tokio::time::interval(Duration::from_secs(1));
    let stop = crate::signal::shutdown();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = heat.tick(), if simulated => {
                let t = started.elapsed().as_secs_f64();
                for (i, file) in temperatures.iter().enumerate() {
                    if let Err(e) = write_temperature(file, simulated_temperature(i, t)) {
                        eprintln!("{e}");
                    }
                }
            }
            _ = tick.tick() => {
                if let Ok(devices) = store.list_devices().await {
                    let online = devices.iter().filter(|d| d.online).count();
                    let samples: i64 = devices.iter().filter_map(|d| d.last_seq).sum();
                    // Whoever reads our output may have gone (a closed pipe): keep running.
                    let _ = writeln!(
                        std::io::stdout(),
                        "  {online}/{} devices online, {samples} samples received",
                        devices.len()
                    );
                }
            }
            r = controller.wait() => {
                return Err(DemoError::Failed(format!(
                    "the controller exited ({}); see {}/controller.log",
                    r.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    base.display()
                )));
            }
        }
    }
    println!("stopping…");
    store.close().await;
    for (_, child) in &mut agents {
        terminate(child).await;
    }
    terminate(&mut controller).await;
    println!("stopped. Files kept in {}", base.display());
    Ok(())
}

/// A new directory for the demo's files, private to this user (0700): `dir`, which must not
/// exist yet, or a fresh, unpredictable one under the system temp dir. An existing
/// directory is refused: another user could have made it, or filled it beforehand.
fn demo_dir(dir: Option<&Path>) -> Result<PathBuf, DemoError> {
    use std::os::unix::fs::DirBuilderExt;
    match dir {
        Some(d) => match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => Ok(d.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(DemoError::Failed(format!(
                    "{} already exists; the demo needs a new directory (give --dir a path that does not exist)",
                    d.display()
                )))
            }
            Err(e) => Err(io(format!("creating {}", d.display()))(e)),
        },
        None => {
            let template = std::env::temp_dir().join("pifleet-demo-XXXXXX");
            nix::unistd::mkdtemp(&template).map_err(|e| DemoError::Io {
                what: format!("creating a directory like {}", template.display()),
                source: e.into(),
            })
        }
    }
}

async fn wait_bound(dd: &DataDir, controller: &mut Child) -> Result<Bound, DemoError> {
    for _ in 0..300 {
        if let Ok(text) = std::fs::read(dd.serve_state())
            && let Ok(b) = serde_json::from_slice::<Bound>(&text)
        {
            return Ok(b);
        }
        if let Ok(Some(status)) = controller.try_wait() {
            return Err(DemoError::Failed(format!(
                "the controller exited at start-up ({status})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DemoError::Failed(
        "the controller did not start within 30 s".into(),
    ))
}

/// The file, next to each demo agent's configuration, that holds its simulated temperature.
const TEMPERATURE_FILE: &str = "temperature";

/// Whether this machine has a readable thermal zone for the agents to report.
fn has_thermal_zone() -> bool {
    std::fs::read_dir("/sys/class/thermal").is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            e.file_name().to_string_lossy().starts_with("thermal_zone")
                && std::fs::read_to_string(e.path().join("temp"))
                    .is_ok_and(|t| t.trim().parse::<i64>().is_ok())
        })
    })
}

/// The unit each demo agent may manage (through its fake systemd, see
/// [`write_fake_systemd`]).
pub const DEMO_UNIT: &str = "demo-kiosk.service";

/// A stand-in for systemd's `systemctl` and `journalctl` in `bin`, for the demo's agents:
/// they keep [`DEMO_UNIT`]'s state in a file next to them, so service commands and the unit
/// states the agents report behave like the real thing without touching this machine's
/// services. (The agent runs them like any program: by argv, through its configured path.)
fn write_fake_systemd(bin: &Path) -> Result<(), DemoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin).map_err(io(format!("creating {}", bin.display())))?;
    let state = bin.join("units");
    std::fs::create_dir_all(&state).map_err(io(format!("creating {}", state.display())))?;
    let systemctl = format!(
        r#"#!/bin/sh
# pifleet demo: a fake systemctl keeping unit states in {state}
dir='{state}'
# Builtins only: the agent runs programs with its configured path (this directory) as PATH.
get() {{ if [ -f "$dir/$1" ]; then read a b < "$dir/$1"; echo "$a $b"; else echo "active running"; fi; }}
cmd="$1"; shift
[ "$1" = "--" ] && shift
case "$cmd" in
  show)
    for u in "$@"; do
      case "$u" in --*) continue ;; esac
      set -- $(get "$u")
      printf 'Id=%s
ActiveState=%s
SubState=%s

' "$u" "$1" "$2"
    done ;;
  start|restart) echo "active running" > "$dir/$1"; echo "$cmd $1: done" ;;
  stop) echo "inactive dead" > "$dir/$1"; echo "stop $1: done" ;;
  status) set -- "$1" $(get "$1"); printf '* %s - pifleet demo unit
   Active: %s (%s)
' "$1" "$2" "$3" ;;
  reboot) echo "the demo does not reboot this machine" ;;
  *) echo "unsupported: $cmd" >&2; exit 1 ;;
esac
"#,
        state = state.display()
    );
    let journalctl = r#"#!/bin/sh
# pifleet demo: a fake journalctl
echo "demo kiosk[412]: serving on :8080"
echo "demo kiosk[412]: 3 clients connected"
"#;
    for (name, text) in [
        ("systemctl", systemctl.as_str()),
        ("journalctl", journalctl),
    ] {
        let path = bin.join(name);
        let tmp = bin.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// Adjusts an agent configuration written by `enroll` for the demo: commands for
/// [`DEMO_UNIT`] through the fake systemd in `bin`, the telemetry interval command, and the
/// simulated temperature file when `simulated`.
fn configure_agent(config: &Path, simulated: bool, bin: &Path) -> Result<(), DemoError> {
    let text =
        std::fs::read_to_string(config).map_err(io(format!("reading {}", config.display())))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| DemoError::Failed(format!("{}: {e}", config.display())))?;
    if simulated {
        section(&mut doc, "telemetry", config)?.insert(
            "temperature_file".into(),
            toml::Value::String(TEMPERATURE_FILE.into()),
        );
    }
    let unit = toml::Value::Array(vec![toml::Value::String(DEMO_UNIT.into())]);
    let commands = section(&mut doc, "commands", config)?;
    commands.insert("services".into(), unit.clone());
    commands.insert("journal_units".into(), unit);
    commands.insert("set_interval".into(), toml::Value::Boolean(true));
    commands.insert("min_interval_s".into(), toml::Value::Integer(1));
    commands.insert(
        "path".into(),
        toml::Value::String(bin.display().to_string()),
    );
    let text = toml::to_string_pretty(&doc)
        .map_err(|e| DemoError::Failed(format!("{}: {e}", config.display())))?;
    let text = format!(
        "# pifleet agent configuration, written by `pifleet-agent enroll`; the demo set up\n# commands for its fake unit manager (and telemetry.temperature_file on machines without a\n# thermal zone). Relative paths are relative to this file.\n\n{text}"
    );
    crate::datadir::write_private(config, text.as_bytes())
        .map_err(|e| DemoError::Failed(e.to_string()))
}

/// The table `[name]` of an agent configuration, created when missing.
fn section<'a>(
    doc: &'a mut toml::Table,
    name: &str,
    config: &Path,
) -> Result<&'a mut toml::Table, DemoError> {
    doc.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| DemoError::Failed(format!("{}: [{name}] is not a table", config.display())))
}

/// A plausible SoC temperature for agent `i` at `t` seconds: each agent idles at its own
/// level and drifts slowly, like a Pi under a changing load.
fn simulated_temperature(i: usize, t: f64) -> f64 {
    let phase = i as f64 * 1.7;
    let base = 44.0 + (i % 7) as f64 * 2.5;
    base + 6.0 * (t / 90.0 + phase).sin() + 1.5 * (t / 7.0 + phase * 3.0).sin()
}

/// Writes a temperature in the sysfs format (millidegrees), atomically so that an agent
/// never reads half a number.
fn write_temperature(file: &Path, celsius: f64) -> Result<(), DemoError> {
    let tmp = file.with_extension("tmp");
    let milli = (celsius * 1000.0).round() as i64;
    std::fs::write(&tmp, format!("{milli}\n"))
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(io(format!("writing {}", file.display())))
}

/// SIGTERM, then SIGKILL after 10 s.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_demo_gets_a_new_private_directory() {
        let a = demo_dir(None).unwrap();
        let b = demo_dir(None).unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        // An existing directory is refused, a new path is made private.
        let err = demo_dir(Some(&a)).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let new = a.join("fresh");
        assert_eq!(demo_dir(Some(&new)).unwrap(), new);
        let mode = std::fs::metadata(&new).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}
