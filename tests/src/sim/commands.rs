//! The command benchmark: single-device `ping` round trips with every simulated device
//! connected, then one command fanned out to all of them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::store::Store;

/// Sequential single-device round trips, then a fan-out to every device. Round trip =
/// `sent_at` (signed and handed to the broker) → `finished_at` (signed receipt verified and
/// stored), both recorded by the controller.
pub async fn command_bench(dd: &DataDir, devices: usize, rounds: usize) -> Result<()> {
    use pifleet_controller::commands::dispatch::{Targets, create_commands};
    use pifleet_controller::model::lifecycle::Status;
    use pifleet_shared::command::Action;
    let store = Store::open(&dd.database(), false).await?;
    let ids: Vec<String> = (0..devices).map(|i| format!("sim-{i:05}")).collect();
    let ttl = Duration::from_secs(120);
    let wait = |cmds: Vec<String>| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut out = Vec::new();
            for id in cmds {
                loop {
                    let row = store.command(&id).await?.context("command vanished")?;
                    if row.status.is_final() {
                        if row.status != Status::Succeeded {
                            bail!(
                                "command {id} ended {} ({:?})",
                                row.status.as_str(),
                                row.reason
                            );
                        }
                        out.push(row);
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("command {id} did not finish");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<_, anyhow::Error>(out)
        }
    };
    let mut rtt = Vec::new();
    for i in 0..rounds {
        let target = Targets::Devices(vec![ids[i % ids.len()].clone()]);
        let created = create_commands(&store, &target, Action::Ping, ttl, ttl).await?;
        for row in wait(created.iter().map(|(id, _)| id.to_string()).collect()).await? {
            rtt.push(row.finished_at.unwrap_or(0) - row.sent_at.unwrap_or(0));
        }
    }
    rtt.sort_unstable();
    let pct = |v: &[i64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "command round trip (sent -> receipt stored), {} sequential pings with {} devices connected: p50 {} ms  p99 {} ms  max {} ms",
        rtt.len(),
        devices,
        pct(&rtt, 0.5),
        pct(&rtt, 0.99),
        pct(&rtt, 1.0)
    );
    let t0 = Instant::now();
    let created = create_commands(
        &store,
        &Targets::Devices(ids.clone()),
        Action::Ping,
        ttl,
        ttl,
    )
    .await?;
    let rows = wait(created.iter().map(|(id, _)| id.to_string()).collect()).await?;
    let first_sent = rows.iter().filter_map(|r| r.sent_at).min().unwrap_or(0);
    let created_at = rows.iter().map(|r| r.created_at).min().unwrap_or(0);
    let last_done = rows.iter().filter_map(|r| r.finished_at).max().unwrap_or(0);
    let mut per: Vec<i64> = rows
        .iter()
        .map(|r| r.finished_at.unwrap_or(0) - r.sent_at.unwrap_or(0))
        .collect();
    per.sort_unstable();
    println!(
        "fan-out of one ping to {} devices: first sent -> last receipt {} ms (created -> last receipt {} ms, {:.1} s wall); per device p50 {} ms p99 {} ms",
        rows.len(),
        last_done - first_sent,
        last_done - created_at,
        t0.elapsed().as_secs_f64(),
        pct(&per, 0.5),
        pct(&per, 0.99)
    );
    store.close().await;
    Ok(())
}
