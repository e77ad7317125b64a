//! Rollout benchmark: a release of `--size-mib` incompressible bytes rolled out to
//! `--devices` simulated devices on loopback. Each device is enrolled through the real API,
//! holds a real mutual-TLS MQTT connection, reports that it allowlists the app, verifies
//! its signed deploy command as the agent does, downloads the signed manifest and the
//! archive over HTTPS with its device certificate (the agent's own client code), checks
//! the archive's SHA-256 while streaming it (nothing is written to disk) and answers with
//! a signed receipt. Prints the time to complete, the controller's CPU time and peak RSS,
//! the bytes served, and the most downloads in flight at once against the rollout's cap.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/pifleet-rollout-bench --devices 100 --size-mib 50 --max-downloads 20
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use pifleet_agent::config::AgentConfig;
use pifleet_agent::https::{Endpoint, send};
use pifleet_controller::approvals::Policy;
use pifleet_controller::commands::dispatch::Targets;
use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions, NewRelease};
use pifleet_controller::rollouts::service::{self, Actor, RolloutRequest};
use pifleet_controller::rollouts::spec::RolloutSettings;
use pifleet_controller::setup;
use pifleet_controller::store::Store;
use pifleet_shared::command::{Action, Outcome};
use pifleet_shared::proto::v1;
use pifleet_shared::release::HealthSpec;
use pifleet_shared::token::to_hex;
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};
use pifleet_tests::harness::Controller;
use pifleet_tests::mqtt;
use pifleet_tests::procstat::{TICKS_PER_SEC, usage};
use pifleet_tests::simkit::{Responder, enroll_all};
use rumqttc::{Event, Packet, QoS};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "pifleet rollout benchmark")]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Size of the release's archive, MiB (incompressible).
    #[arg(long, default_value_t = 50)]
    size_mib: usize,
    /// The rollout's cap on downloads in flight.
    #[arg(long, default_value_t = 20)]
    max_downloads: u32,
}

/// What the devices measured.
#[derive(Default)]
struct Stats {
    bytes: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// A pseudo-random, incompressible archive of about `mib` MiB holding one file.
fn write_archive(path: &std::path::Path, mib: usize) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    tar.append_data(&mut h, "data.bin", data.as_slice())?;
    tar.into_inner()?.finish()?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ctl = Controller::start_with(
        "[approvals]\ndevice_threshold = 100000\nwhole_fleet = false\n\
         [rollouts]\npoll_ms = 500\nsettle_ms = 50\n\
         [enrollment]\nrate_burst = 100000\nrate_per_minute = 100000\n",
    )
    .await?;
    let pid = ctl.child().context("controller")?.id();
    let dd = DataDir::new(&ctl.data);
    let configs = enroll_all(
        &dd,
        &ctl.tmp.path().join("sim"),
        args.devices,
        ctl.https.port(),
    )
    .await?;
    println!("{} devices enrolled", configs.len());

    let stats = Arc::new(Stats::default());
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for cfg in configs {
        let (stats, connected) = (stats.clone(), connected.clone());
        let port = ctl.mqtt.port();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = device(cfg, port, stats, connected).await {
                eprintln!("device error: {e:#}");
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < args.devices as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} devices connected",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The apps reports reach the database through the ingest batch.
    let store = Store::open(&dd.database(), false).await?;
    let ids: Vec<String> = (0..args.devices).map(|i| format!("sim-{i:05}")).collect();
    loop {
        let facts = store.device_facts().await?;
        let reported = facts.iter().filter(|f| f.apps.is_some()).count();
        if reported >= args.devices {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {reported} devices reported their apps");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let archive = ctl.tmp.path().join("web.tar.gz");
    write_archive(&archive, args.size_mib)?;
    let release = releases::create_release(
        &dd,
        &store,
        &setup::release_signer(&dd)?,
        &IntakeOptions::default(),
        NewRelease {
            app: "web".into(),
            version: "1".into(),
            arches: vec![],
            health: HealthSpec::default(),
            hooks: vec![],
            created_by: "bench".into(),
        },
        Input::Upload {
            path: archive,
            file_name: None,
        },
    )
    .await?;
    println!(
        "release {} of web: archive {} bytes",
        release.release, release.archive_size
    );

    let before = usage(pid)?;
    let t0 = Instant::now();
    let created = service::create(
        &store,
        // Measured here is the rollout, not the second person.
        &Policy {
            device_threshold: u32::MAX,
            whole_fleet: false,
            expiry: Duration::from_secs(60),
        },
        RolloutRequest {
            release_id: release.id,
            targets: Targets::Devices(ids),
            settings: RolloutSettings {
                canary: 1,
                batch_percents: vec![100],
                max_concurrent_downloads: args.max_downloads,
                ..RolloutSettings::default()
            },
        },
        Actor {
            name: "bench",
            user_id: None,
        },
        false,
    )
    .await;
    let created = match created {
        Ok(c) => c,
        Err(e) => bail!("rollout: {e}"),
    };
    let id = created.rollout.context("rollout")?.id;
    let status = loop {
        let row = store.rollout(id).await?.context("rollout gone")?;
        if row.status != "running" {
            break row;
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!("the rollout did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = t0.elapsed();
    let after = usage(pid)?;
    let cpu_s = (after.cpu_ticks - before.cpu_ticks) as f64 / TICKS_PER_SEC;
    let bytes = stats.bytes.load(Ordering::Relaxed);
    println!(
        "rollout {id}: {} ({}) in {:.1} s",
        status.status,
        status.reason.unwrap_or_default(),
        elapsed.as_secs_f64()
    );
    println!(
        "devices done {} failed {}; bytes served {} ({:.1} MiB, {:.0} MiB/s)",
        stats.done.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        bytes,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "controller CPU {:.1} s ({:.0} % of one core); peak RSS {:.1} MiB",
        cpu_s,
        100.0 * cpu_s / elapsed.as_secs_f64(),
        after.hwm_kib as f64 / 1024.0
    );
    println!(
        "downloads in flight at once: at most {} (cap {})",
        stats.max_in_flight.load(Ordering::Relaxed),
        args.max_downloads
    );
    for t in tasks {
        t.abort();
    }
    store.close().await;
    Ok(())
}

/// One simulated device: connects, reports its apps, answers deploy commands by
/// downloading and checking the release, and pings like the simulator does.
async fn device(
    cfg: AgentConfig,
    port: u16,
    stats: Arc<Stats>,
    connected: Arc<AtomicU64>,
) -> Result<()> {
    let tls = mqtt::client_tls(&cfg.tls.ca, Some((&cfg.tls.cert, &cfg.tls.key)))?;
    let (client, mut el) = mqtt::client(port, cfg.device_id.as_str(), tls);
    client
        .subscribe(Topic::down_filter(&cfg.device_id), QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await? {
            break;
        }
    }
    let event_topic = Topic::new(cfg.device_id.clone(), Kind::Event).to_string();
    let apps = v1::Event::Apps(vec![v1::AppState {
        app: "web".into(),
        unit: "web.service".into(),
        current: None,
        current_dir: None,
        kept: vec![],
    }]);
    client
        .publish(
            &event_topic,
            QoS::AtLeastOnce,
            false,
            codec::encode(Kind::Event, &apps)?,
        )
        .await?;
    connected.fetch_add(1, Ordering::Relaxed);
    let responder = Arc::new(Responder::new(&cfg)?);
    let https = Arc::new(pifleet_agent::tls::https_client(
        &cfg.tls.ca,
        &cfg.tls.cert,
        &cfg.tls.key,
    )?);
    let endpoint = Endpoint::parse(&cfg.controller.url)?;
    loop {
        let Event::Incoming(Packet::Publish(p)) = el.poll().await? else {
            continue;
        };
        let Some((id, action)) = responder.verify(&p.payload) else {
            continue;
        };
        let Action::Deploy {
            manifest_sha256,
            archive_sha256,
            archive_size,
            ..
        } = action
        else {
            if let Some((topic, payload)) = responder.receipt(id, Outcome::Succeeded, b"") {
                client.try_publish(topic, QoS::AtMostOnce, false, payload)?;
            }
            continue;
        };
        let (client, responder, stats, https) = (
            client.clone(),
            responder.clone(),
            stats.clone(),
            https.clone(),
        );
        let endpoint = Endpoint {
            host: endpoint.host.clone(),
            port: endpoint.port,
        };
        tokio::spawn(async move {
            if let Some((topic, payload)) = responder.receipt(id, Outcome::Accepted, b"") {
                let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
            }
            let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
            let got = download(
                &endpoint,
                https,
                &manifest_sha256,
                &archive_sha256,
                archive_size,
                &stats,
            )
            .await;
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let outcome = match got {
                Ok(()) => {
                    stats.done.fetch_add(1, Ordering::Relaxed);
                    Outcome::Succeeded
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    Outcome::Failed(format!("download: {e:#}"))
                }
            };
            if let Some((topic, payload)) = responder.receipt(id, outcome, b"") {
                let _ = client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await;
            }
        });
    }
}

/// Fetches the manifest, then streams the archive through SHA-256.
async fn download(
    to: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    manifest: &[u8; 32],
    archive: &[u8; 32],
    size: u64,
    stats: &Stats,
) -> Result<()> {
    let get = |path: String| hyper::Request::get(path).body(Full::new(Bytes::new()));
    let m = send(
        to,
        tls.clone(),
        get(format!(
            "/api/v1/device/releases/{}/manifest",
            to_hex(manifest)
        ))?,
    )
    .await?;
    if !m.status().is_success() {
        bail!("manifest: {}", m.status());
    }
    m.into_body().collect().await?;
    let a = send(
        to,
        tls,
        get(format!(
            "/api/v1/device/releases/{}/archive",
            to_hex(manifest)
        ))?,
    )
    .await?;
    if !a.status().is_success() {
        bail!("archive: {}", a.status());
    }
    let mut body = a.into_body();
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
            hash.update(&data);
        }
    }
    stats.bytes.fetch_add(got, Ordering::Relaxed);
    if got != size || hash.finalize()[..] != archive[..] {
        bail!("the archive is not the one the command names ({got} of {size} bytes)");
    }
    Ok(())
}
