//! Fleet simulator: enrolls N devices through the real enrollment API, opens N real
//! mutual-TLS MQTT connections from several loopback source addresses and processes,
//! retrying like the agent, and measures connect times, telemetry throughput and
//! publish→ack latency (the ack is sent only after the SQLite commit), reconnect storms,
//! and the broker's CPU, memory and descriptors.
//!
//! ```text
//! pifleet-controller init --data-dir /tmp/bench --hostname localhost
//! pifleet-sim --data-dir /tmp/bench --spawn-controller target/release/pifleet-controller \
//!     --devices 10000 --processes 2 --sources 4 --rate 0.1 --duration 30 --storm kill
//! # Scale-out mode: devices on the broker in front of the controllers, re-sending like agents
//! pifleet-sim --data-dir /var/lib/pifleet --broker external --devices 500 --resend-s 5
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use pifleet_controller::datadir::DataDir;
use pifleet_tests::procstat;
use pifleet_tests::sim::procs::{Workers, raise_nofile, ranges};
use pifleet_tests::sim::proto::Command;
use pifleet_tests::sim::report::{Connect, Report, Steady, Storm};
use pifleet_tests::sim::state::{AckMode, Settings};
use pifleet_tests::sim::target::Target;
use pifleet_tests::sim::worker::Worker;
use pifleet_tests::simkit::ensure_enrolled;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StormKind {
    /// kill -9 the broker and start it again on the same ports.
    Kill,
    /// Every device closes its connection at once and reconnects.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Broker {
    /// The controller's own gateway and broker.
    Pifleet,
    /// Debian's Mosquitto with the controller's certificates (side-by-side comparison).
    Mosquitto,
    /// A broker someone else runs in front of the controllers (scale-out mode, `[mqtt] mode
    /// = "external"`): devices connect to the MQTT port their enrollment handed out
    /// (`mqtt.public_port`) and wait for the controllers' application acks.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ack {
    /// The controller's application ack (`down/ack`), sent after the commit.
    App,
    /// The broker's PUBACK.
    Puback,
}

#[derive(Parser, Debug)]
#[command(
    about = "pifleet fleet simulator and ingest benchmark",
    args_override_self = true
)]
struct Args {
    /// The controller's data dir (its CA, its enrollment API, its serve.json).
    #[arg(long)]
    data_dir: PathBuf,
    /// Start `PATH serve` on the data dir with fixed loopback ports (required for
    /// `--storm kill` against pifleet) and stop it at the end.
    #[arg(long, value_name = "PATH")]
    spawn_controller: Option<PathBuf>,
    /// What the devices connect to.
    #[arg(long, value_enum, default_value_t = Broker::Pifleet)]
    broker: Broker,
    /// What counts as a sample's acknowledgement (default: the application ack, except
    /// PUBACKs for `--broker mosquitto`, which has no controller behind it).
    #[arg(long, value_enum)]
    ack: Option<Ack>,
    /// Keep unacknowledged samples and send them again after a reconnect and after this many
    /// seconds without acknowledgement progress, like the agent's spool; at the end, stop
    /// telemetry and wait for every sample's ack (0: forget them, as before).
    #[arg(long, default_value_t = 0)]
    resend_s: u64,
    /// Simulated devices (each a real mTLS connection).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Samples per second per device.
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// Samples per MQTT message.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Seconds of steady load after all devices are connected (0: none).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Where enrolled identities are kept (reused across runs).
    #[arg(long)]
    identities: Option<PathBuf>,
    /// After connecting: this many sequential single-device `ping` command round trips,
    /// then one command fanned out to every device (0: skip).
    #[arg(long, default_value_t = 0)]
    commands: usize,
    /// Spread devices round-robin over source addresses 127.0.0.2 … 127.0.0.(N+1).
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// Worker processes holding the devices (each under the open-file limit).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Cap of the reconnect backoff, seconds (the agent's `mqtt.backoff_max_s`).
    #[arg(long, default_value_t = 60)]
    backoff_max_s: u64,
    /// Timeout of one connect attempt (TCP + TLS + CONNACK), seconds, like the agent's.
    #[arg(long, default_value_t = 5)]
    connect_timeout_s: u64,
    /// MQTT keep-alive, seconds (the agent's default).
    #[arg(long, default_value_t = 30)]
    keep_alive_s: u64,
    /// After the steady load: reconnect storms, in this order (`kill,drop`).
    #[arg(long, value_enum, value_delimiter = ',')]
    storm: Vec<StormKind>,
    /// How many times the `--storm` list runs.
    #[arg(long, default_value_t = 1)]
    storms: usize,
    /// Seconds between storms.
    #[arg(long, default_value_t = 2)]
    storm_pause_s: u64,
    /// How long a phase (connect, storm) may take before the report says what it got.
    #[arg(long, default_value_t = 300)]
    phase_timeout_s: u64,
    /// Enroll the identities (those missing) and stop.
    #[arg(long)]
    enroll_only: bool,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    // ---- Between the simulator and its workers --------------------------------------
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    mqtt_port: u16,
}

impl Args {
    fn identities(&self) -> PathBuf {
        self.identities
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sim-identities"))
    }

    fn settings(&self, port: u16) -> Settings {
        Settings {
            broker: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            rate: self.rate,
            batch: self.batch.max(1),
            keep_alive: Duration::from_secs(self.keep_alive_s.max(1)),
            connect_timeout: Duration::from_secs(self.connect_timeout_s.max(1)),
            backoff_max: Duration::from_secs(self.backoff_max_s.max(1)),
            ack: match (self.ack, self.broker) {
                (Some(Ack::App), _) | (None, Broker::Pifleet | Broker::External) => AckMode::App,
                (Some(Ack::Puback), _) | (None, Broker::Mosquitto) => AckMode::PubAck,
            },
            sources: self.sources.max(1),
            resend: (self.resend_s > 0).then(|| Duration::from_secs(self.resend_s)),
        }
    }

    /// The command line of a worker (its range is added by `Workers::spawn`).
    fn worker_args(&self, port: u16) -> Vec<String> {
        let mut a = vec![
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--identities".into(),
            self.identities().display().to_string(),
            "--broker".into(),
            match self.broker {
                Broker::Pifleet => "pifleet".into(),
                Broker::Mosquitto => "mosquitto".into(),
                Broker::External => "external".into(),
            },
            "--mqtt-port".into(),
            port.to_string(),
        ];
        if let Some(ack) = self.ack {
            a.push("--ack".into());
            a.push(match ack {
                Ack::App => "app".into(),
                Ack::Puback => "puback".into(),
            });
        }
        for (flag, v) in [
            ("--rate", self.rate.to_string()),
            ("--batch", self.batch.to_string()),
            ("--sources", self.sources.to_string()),
            ("--backoff-max-s", self.backoff_max_s.to_string()),
            ("--connect-timeout-s", self.connect_timeout_s.to_string()),
            ("--keep-alive-s", self.keep_alive_s.to_string()),
            ("--phase-timeout-s", self.phase_timeout_s.to_string()),
            ("--resend-s", self.resend_s.to_string()),
        ] {
            a.push(flag.into());
            a.push(v);
        }
        a
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Every process of the simulator may open as many sockets as this machine lets it.
    let nofile = raise_nofile().context("raising the open-file limit")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.worker {
        let worker = Worker {
            identities: args.identities(),
            first: args.first,
            devices: args.devices,
            settings: args.settings(args.mqtt_port),
            phase_timeout: Duration::from_secs(args.phase_timeout_s),
        };
        return rt.block_on(worker.run());
    }
    if args.resend_s > 0 && args.settings(0).ack != AckMode::App {
        // A PUBACK's packet id means nothing on the next connection.
        bail!("--resend-s needs the application ack (--ack app)");
    }
    let per_process = args.devices.div_ceil(args.processes.max(1)) as u64;
    if per_process + 64 > nofile {
        bail!(
            "{per_process} devices per process do not fit the open-file limit {nofile}: raise --processes"
        );
    }
    rt.block_on(parent(args))
}

/// The MQTT port the first simulated device's enrollment handed out.
fn enrolled_port(identities: &std::path::Path) -> Result<u16> {
    let path = identities
        .join(pifleet_tests::sim::worker::device_id(0))
        .join("agent.toml");
    let cfg = pifleet_agent::config::AgentConfig::load(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(cfg.controller.mqtt_port)
}

/// Broker CPU ticks, simulator CPU ticks (itself and its workers).
fn cpu(broker: u32, sim: &[u32]) -> (u64, u64) {
    let ticks = |pid| procstat::usage(pid).map_or(0, |u| u.cpu_ticks);
    (ticks(broker), sim.iter().copied().map(ticks).sum())
}

async fn parent(args: Args) -> Result<()> {
    let dd = DataDir::new(&args.data_dir);
    let mut controller = match (&args.spawn_controller, args.broker) {
        (Some(exe), _) => Target::spawn_controller(exe, &dd)?,
        // Devices on a broker need no controller once enrolled (a counting subscriber may
        // stand in for the controllers).
        (None, Broker::External) => Target::external(&dd).unwrap_or_else(|_| Target::detached(&dd)),
        (None, _) => Target::external(&dd)?,
    };
    let last = args
        .identities()
        .join(pifleet_tests::sim::worker::device_id(
            args.devices.saturating_sub(1),
        ));
    let https = match controller.https {
        Some(a) => a.port(),
        None if last.join("agent.toml").exists() => 0,
        None => bail!(
            "devices to enroll and no controller running on {}",
            args.data_dir.display()
        ),
    };
    let t = Instant::now();
    let enrolled_new = ensure_enrolled(&dd, &args.identities(), args.devices, https).await?;
    let enroll_s = t.elapsed().as_secs_f64();
    eprintln!(
        "{} devices enrolled ({enrolled_new} new, {enroll_s:.1} s)",
        args.devices
    );
    if args.enroll_only {
        controller.stop();
        return Ok(());
    }
    let mut mosquitto = match args.broker {
        Broker::Mosquitto => Some(Target::spawn_mosquitto(&dd)?),
        Broker::Pifleet | Broker::External => None,
    };
    if args.broker == Broker::External && !args.storm.is_empty() {
        bail!("--storm needs a broker the simulator runs: not with --broker external");
    }
    let target = mosquitto.as_mut().unwrap_or(&mut controller);
    let port = match args.broker {
        Broker::External => enrolled_port(&args.identities())?,
        Broker::Pifleet | Broker::Mosquitto => target.mqtt.port(),
    };
    let rss_before = procstat::usage(target.pid).map_or(0, |u| u.rss_kib);
    let exe = std::env::current_exe()?;
    let mut workers = Workers::spawn(
        &exe,
        &args.worker_args(port),
        &ranges(args.devices, args.processes),
    )
    .await?;
    let mut sim_pids = workers.pids();
    sim_pids.push(std::process::id());
    let mut report = Report {
        broker: match args.broker {
            Broker::External => "external".into(),
            Broker::Pifleet | Broker::Mosquitto => target.name.into(),
        },
        devices: args.devices,
        processes: sim_pids.len() - 1,
        sources: args.sources.max(1),
        rate: args.rate,
        batch: args.batch.max(1),
        enrolled_new,
        enroll_s,
        ..Default::default()
    };
    eprintln!("connecting {} devices", args.devices);
    let (b0, s0) = cpu(target.pid, &sim_pids);
    report.connect = Connect::merge(&workers.all(Command::Connect).await?);
    let (b1, s1) = cpu(target.pid, &sim_pids);
    report.connect.broker_cpu_s = b1.saturating_sub(b0) as f64 / procstat::TICKS_PER_SEC;
    report.connect.sim_cpu_s = s1.saturating_sub(s0) as f64 / procstat::TICKS_PER_SEC;
    eprintln!(
        "{}/{} connected",
        report.connect.connected, report.connect.devices
    );
    if args.commands > 0 && args.broker == Broker::Pifleet {
        pifleet_tests::sim::commands::command_bench(&dd, args.devices, args.commands).await?;
    }
    workers.all(Command::Load).await?;
    if args.duration > 0 {
        let mut steady = Steady {
            duration_s: args.duration as f64,
            offered_samples_per_s: args.devices as f64 * args.rate,
            broker_rss_before_kib: rss_before,
            ..Default::default()
        };
        let (b0, s0) = cpu(target.pid, &sim_pids);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(args.duration);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(500).min(end - Instant::now())).await;
            if let Ok(u) = procstat::usage(target.pid) {
                steady.broker_rss_peak_kib = steady.broker_rss_peak_kib.max(u.rss_kib);
                steady.broker_rss_kib = u.rss_kib;
            }
        }
        let (b1, s1) = cpu(target.pid, &sim_pids);
        let elapsed = t0.elapsed().as_secs_f64();
        if args.resend_s > 0 {
            // Everything sent must be acknowledged before the counters are read.
            let settled = workers.all(Command::Settle).await?;
            let mut unacked = 0;
            for r in &settled {
                match r {
                    pifleet_tests::sim::proto::Reply::Settled { unacked: n } => unacked += n,
                    other => bail!("a worker answered {other:?} to settle"),
                }
            }
            steady.unacked = Some(unacked);
        }
        steady.duration_s = elapsed;
        steady.broker_fds = procstat::open_fds(target.pid).unwrap_or(0);
        steady.sim_rss_kib = sim_pids
            .iter()
            .filter_map(|p| procstat::usage(*p).ok())
            .map(|u| u.rss_kib)
            .sum();
        let pct = |ticks: u64| ticks as f64 / procstat::TICKS_PER_SEC / elapsed * 100.0;
        steady.broker_cpu_pct = pct(b1.saturating_sub(b0));
        steady.sim_cpu_pct = pct(s1.saturating_sub(s0));
        steady.rss_per_device_kib =
            steady.broker_rss_kib.saturating_sub(rss_before) as f64 / args.devices.max(1) as f64;
        steady.merge_stats(&workers.all(Command::Stats).await?);
        report.steady = Some(steady);
    }
    let storms = (0..args.storms).flat_map(|_| args.storm.iter().copied());
    for (i, kind) in storms.enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(args.storm_pause_s)).await;
        }
        let drop = kind == StormKind::Drop;
        let (_, s0) = cpu(target.pid, &sim_pids);
        workers.all(Command::Storm { drop }).await?;
        if !drop {
            target.kill_and_restart()?;
        }
        let mut storm = Storm::merge(
            if drop { "drop" } else { "kill" },
            &workers.all(Command::Wait).await?,
        );
        let (_, s1) = cpu(target.pid, &sim_pids);
        storm.sim_cpu_s = s1.saturating_sub(s0) as f64 / procstat::TICKS_PER_SEC;
        eprintln!(
            "storm {} ({}): {}/{} reconnected, {} acknowledged",
            i + 1,
            storm.kind,
            storm.reconnected,
            storm.devices,
            storm.acknowledged
        );
        report.storms.push(storm);
    }
    workers.quit().await?;
    if let Some(m) = mosquitto.as_mut() {
        m.stop();
    }
    controller.stop();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
