//! Ingest: device messages from the broker → decoded and validated → one writer task that
//! commits them in batched transactions (group commit) → acknowledgements of the committed
//! sequence numbers published back to each device.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pifleet_shared::command::SignedReceipt;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, Topic, codec};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::Publish;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::IngestConfig;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::mqtt::gateway::Gateway;
use crate::store::{IngestOp, Store};
use crate::supervise::{Fatal, Health, Retry, TaskResult};

/// A message for a device, published through the broker link.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: Topic,
    pub payload: Vec<u8>,
}

/// Where a routed device message goes.
#[derive(Debug)]
enum Routed {
    Ingest(IngestOp),
    Receipt(DeviceId, SignedReceipt),
    Renew(DeviceId, v1::RenewRequest),
}

/// Where routed messages other than ingest operations go.
#[derive(Debug)]
pub struct Handlers {
    /// Signed command receipts, to the dispatcher.
    pub receipts: mpsc::Sender<(DeviceId, SignedReceipt)>,
    /// Certificate renewal requests, to [`crate::pki::renew::serve`].
    pub renewals: mpsc::Sender<(DeviceId, v1::RenewRequest)>,
}

/// Reads every `fleet/+/up/#` message from the in-process broker link and queues it for
/// the writer. Undecodable input is counted, logged and dropped, and the sender is
/// disconnected; it never stops the loop. The link closing means the embedded broker is
/// gone, which retrying cannot fix.
pub async fn route(
    mut rx: LinkRx,
    queue: mpsc::Sender<IngestOp>,
    handlers: Handlers,
    gateway: Arc<Gateway>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> TaskResult {
    let gone = |e| Fatal::new("the embedded broker's link closed", e);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = rx.next() => n,
        };
        let notification = match n {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => return Err(gone(e)),
        };
        let fwd = match notification {
            Notification::Forward(fwd) => fwd,
            // The router paused us because our buffer filled up: ask to be rescheduled,
            // or no message would ever reach ingest again.
            Notification::Unschedule => {
                rx.wake().await.map_err(gone)?;
                continue;
            }
            _ => continue,
        };
        match to_op(&fwd.publish) {
            Ok(Some(Routed::Ingest(op))) => {
                if let IngestOp::UnitEvent { event, .. } = &op {
                    metrics
                        .watchdog_events
                        .with_label_values(&[event.kind.as_str()])
                        .inc();
                }
                if queue.send(op).await.is_err() {
                    return Err(Fatal::msg("the ingest writer is gone"));
                }
            }
            Ok(Some(Routed::Receipt(device, receipt))) => {
                if handlers.receipts.send((device, receipt)).await.is_err() {
                    return Err(Fatal::msg("the receipt handler is gone"));
                }
            }
            Ok(Some(Routed::Renew(device, req))) => {
                // A full queue means a flood: dropping is fine, the device asks again.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    handlers.renewals.try_send((device, req))
                {
                    return Err(Fatal::msg("the renewal handler is gone"));
                }
            }
            Ok(None) => {}
            Err((device, reason, detail)) => {
                metrics.ingest_dropped.with_label_values(&[reason]).inc();
                tracing::warn!(device = device.as_ref().map(DeviceId::as_str), reason, detail = %detail, "device message dropped");
                if let Some(d) = device {
                    gateway.disconnect(&d, "bad_payload");
                }
            }
        }
    }
}

type Refusal = (Option<DeviceId>, &'static str, String);

fn to_op(p: &Publish) -> Result<Option<Routed>, Refusal> {
    let topic_s =
        std::str::from_utf8(&p.topic).map_err(|_| (None, "topic", "topic not UTF-8".to_owned()))?;
    let topic = Topic::parse(topic_s).map_err(|e| (None, "topic", format!("{topic_s:?}: {e}")))?;
    let device = topic.device;
    let bad = |e: codec::DecodeError| (Some(device.clone()), e.reason(), e.to_string());
    Ok(match topic.kind {
        Kind::Telemetry => {
            let t: v1::Telemetry = codec::decode(Kind::Telemetry, &p.payload).map_err(bad)?;
            if t.samples.is_empty() {
                return Ok(None);
            }
            Some(Routed::Ingest(IngestOp::Telemetry {
                device,
                samples: t.samples,
            }))
        }
        Kind::Hello => {
            let hello: v1::Hello = codec::decode(Kind::Hello, &p.payload).map_err(bad)?;
            Some(Routed::Ingest(IngestOp::Hello { device, hello }))
        }
        Kind::Result => {
            let r: SignedReceipt = codec::decode(Kind::Result, &p.payload).map_err(bad)?;
            Some(Routed::Receipt(device, r))
        }
        Kind::Status => {
            // Informational: online state comes from the gateway's connection events.
            let _: v1::Status = codec::decode(Kind::Status, &p.payload).map_err(bad)?;
            None
        }
        Kind::Event => match codec::decode(Kind::Event, &p.payload).map_err(bad)? {
            v1::Event::Capabilities(capabilities) => Some(Routed::Ingest(IngestOp::Capabilities {
                device,
                capabilities,
            })),
            v1::Event::Services(states) => {
                Some(Routed::Ingest(IngestOp::Services { device, states }))
            }
            // Progress only: the command's receipts carry its outcome.
            v1::Event::Deploy(p) => {
                tracing::info!(device = %device, command = %p.command, app = %p.app, release = p.release, phase = p.phase.as_str(), bytes = p.bytes, total = p.total, "deploy progress");
                Some(Routed::Ingest(IngestOp::DeployProgress {
                    device,
                    progress: p,
                }))
            }
            v1::Event::Apps(apps) => {
                if let Err(e) = check_apps(&apps) {
                    return Err((Some(device), "invalid", format!("apps: {e}")));
                }
                Some(Routed::Ingest(IngestOp::Apps { device, apps }))
            }
            v1::Event::Watchdog(event) => {
                if let Err(e) = pifleet_shared::command::validate_name(&event.unit) {
                    return Err((Some(device), "invalid", format!("watchdog unit: {e}")));
                }
                tracing::warn!(device = %device, unit = %event.unit, kind = event.kind.as_str(), "watchdog event");
                Some(Routed::Ingest(IngestOp::UnitEvent { device, event }))
            }
            v1::Event::GuardRollback(rollback) => {
                if !pifleet_shared::release::valid_app_name(&rollback.app) {
                    return Err((Some(device), "invalid", "guard rollback: app name".into()));
                }
                tracing::warn!(device = %device, app = %rollback.app, release = rollback.release, reason = %rollback.reason, "release rolled back in its guard window");
                Some(Routed::Ingest(IngestOp::GuardRollback { device, rollback }))
            }
        },
        Kind::Csr => {
            let req: v1::RenewRequest = codec::decode(Kind::Csr, &p.payload).map_err(bad)?;
            Some(Routed::Renew(device, req))
        }
        Kind::Cmd | Kind::Ack | Kind::Cert => None,
    })
}

/// Most apps one device may report (`[apps.NAME]` sections), and releases kept per app.
const MAX_APPS: usize = 64;
const MAX_KEPT: usize = 16;

/// An apps report must name real apps and units, and few of them.
fn check_apps(apps: &[v1::AppState]) -> Result<(), String> {
    if apps.len() > MAX_APPS {
        return Err(format!("more than {MAX_APPS} apps"));
    }
    for a in apps {
        if !pifleet_shared::release::valid_app_name(&a.app) {
            return Err(format!(
                "app name {:?}",
                a.app.chars().take(80).collect::<String>()
            ));
        }
        pifleet_shared::command::validate_name(&a.unit).map_err(|e| format!("unit: {e}"))?;
        if a.kept.len() > MAX_KEPT || a.current_dir.as_ref().is_some_and(|d| d.len() > 128) {
            return Err(format!(
                "app {}: too many kept releases or a long directory",
                a.app
            ));
        }
    }
    Ok(())
}

/// Where the writer's outcomes go: metrics, the dashboard's live hub, readiness.
#[derive(Debug, Clone)]
pub struct WriterContext {
    pub metrics: Metrics,
    pub live: Hub,
    pub health: Arc<Health>,
    /// Longest pause between retries of a failing commit.
    pub retry_max: Duration,
}

/// The writer's component name in readiness reports.
const WRITER: &str = "ingest-writer";

/// The single database writer: batches queued operations into transactions and, after each
/// commit, acknowledges the committed sequence numbers to their devices. A commit that
/// fails for a while (a locked or full disk) is retried with backoff, the controller
/// reporting itself not ready meanwhile; nothing is acknowledged until it commits, and the
/// bounded queue pushes back on the broker meanwhile. A broken database ends the task.
pub async fn write(
    store: Store,
    mut queue: mpsc::Receiver<IngestOp>,
    out: mpsc::UnboundedSender<Outgoing>,
    online: Arc<Notify>,
    cfg: IngestConfig,
    ctx: WriterContext,
) -> TaskResult {
    let WriterContext {
        metrics,
        live,
        health,
        retry_max,
    } = ctx;
    let max_delay = Duration::from_millis(cfg.batch_max_delay_ms);
    let mut batch: Vec<IngestOp> = Vec::new();
    loop {
        // Wait for the first operation; None means every sender is gone: drained, stop.
        let Some(first) = queue.recv().await else {
            return Ok(());
        };
        let mut samples = op_samples(&first);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + max_delay;
        while samples < cfg.batch_max_samples {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(op)) => {
                    samples += op_samples(&op);
                    batch.push(op);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let started = Instant::now();
        let mut retry = Retry::new(retry_max);
        let committed = loop {
            let span = tracing::info_span!("ingest_batch", samples, messages = batch.len());
            match store.write_batch(&batch).instrument(span).await {
                Ok(dropped) => {
                    health.recovered(WRITER);
                    break dropped;
                }
                Err(e) if e.is_fatal() => return Err(Fatal::new("the database is broken", e)),
                Err(e) => {
                    // Nothing is acknowledged, so agents keep the samples meanwhile.
                    metrics.ingest_commit_failures.inc();
                    health.degraded(WRITER, &e);
                    tracing::debug!(error = %e, samples, "ingest commit failed; retrying");
                    tokio::time::sleep(retry.next_delay()).await;
                }
            }
        };
        metrics.agent_spool_dropped.inc_by(committed);
        metrics
            .ingest_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.ingest_batch_samples.observe(samples as f64);
        metrics.ingest_samples.inc_by(samples as u64);
        for (device, ack) in acks_for(&batch) {
            let topic = Topic::new(device, Kind::Ack);
            // Split a huge ack so each message fits its size limit.
            for chunk in ack.ranges.chunks(200) {
                let msg = v1::Ack {
                    ranges: chunk.to_vec(),
                };
                match codec::encode(Kind::Ack, &msg) {
                    Ok(payload) => {
                        let _ = out.send(Outgoing {
                            topic: topic.clone(),
                            payload,
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "ack encoding failed"),
                }
            }
        }
        let mut changed: Vec<String> = batch
            .iter()
            .map(|op| op.device().as_str().to_owned())
            .collect();
        changed.sort_unstable();
        changed.dedup();
        live.devices_changed(changed);
        let mut details: Vec<String> = batch
            .iter()
            .filter(|op| {
                // Rollouts watch these too (progress, guard rollbacks, apps).
                !matches!(
                    op,
                    IngestOp::Telemetry { .. } | IngestOp::Hello { .. } | IngestOp::Online { .. }
                )
            })
            .map(|op| op.device().as_str().to_owned())
            .collect();
        details.sort_unstable();
        details.dedup();
        live.details_changed(details);
        // Devices that just came online may have commands waiting.
        if batch
            .iter()
            .any(|op| matches!(op, IngestOp::Online { online: true, .. }))
        {
            online.notify_one();
        }
        batch.clear();
    }
}

fn op_samples(op: &IngestOp) -> usize {
    match op {
        IngestOp::Telemetry { samples, .. } => samples.len(),
        _ => 1,
    }
}

/// Committed sequence numbers per device, as compact inclusive ranges.
pub fn acks_for(batch: &[IngestOp]) -> Vec<(DeviceId, v1::Ack)> {
    let mut seqs: BTreeMap<&DeviceId, Vec<u64>> = BTreeMap::new();
    for op in batch {
        if let IngestOp::Telemetry { device, samples } = op {
            seqs.entry(device)
                .or_default()
                .extend(samples.iter().map(|s| s.seq));
        }
    }
    seqs.into_iter()
        .map(|(device, mut s)| {
            s.sort_unstable();
            s.dedup();
            let mut ranges: Vec<v1::SeqRange> = Vec::new();
            for seq in s {
                match ranges.last_mut() {
                    Some(r) if r.last.checked_add(1) == Some(seq) => r.last = seq,
                    _ => ranges.push(v1::SeqRange {
                        first: seq,
                        last: seq,
                    }),
                }
            }
            (device.clone(), v1::Ack { ranges })
        })
        .collect()
}

/// Publishes messages for devices (acks, commands) through the broker link. Runs on its
/// own thread because the link's send blocks when the router is busy. Ends when every
/// sender is gone (shutdown), or fails when the embedded broker is gone.
pub fn publish(
    mut tx: LinkTx,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    metrics: Metrics,
) -> TaskResult {
    while let Some(msg) = rx.blocking_recv() {
        metrics
            .mqtt_messages_out
            .with_label_values(&[msg.topic.kind.as_str()])
            .inc();
        metrics.mqtt_bytes_out.inc_by(msg.payload.len() as u64);
        tx.publish(msg.topic.to_string().into_bytes(), msg.payload)
            .map_err(|e| Fatal::new("the embedded broker's link closed", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> v1::Sample {
        v1::Sample {
            seq,
            ts_ms: 0,
            cpu_pct: 0.0,
            load1: 0.0,
            load5: 0.0,
            load15: 0.0,
            mem_total_bytes: 0,
            mem_used_bytes: 0,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disks: vec![],
            nets: vec![],
            temp_c: None,
            throttled: None,
            uptime_s: 0,
            spool_dropped: 0,
            spool_backlog: 0,
        }
    }

    #[test]
    fn acks_are_compact_ranges_per_device() {
        let a = DeviceId::parse("dev-a").unwrap();
        let b = DeviceId::parse("dev-b").unwrap();
        let batch = vec![
            IngestOp::Telemetry {
                device: a.clone(),
                samples: [5, 1, 2, 3, 9].into_iter().map(sample).collect(),
            },
            IngestOp::Online {
                device: b.clone(),
                online: true,
            },
            IngestOp::Telemetry {
                device: b.clone(),
                samples: vec![sample(7)],
            },
            IngestOp::Telemetry {
                device: a.clone(),
                samples: vec![sample(4), sample(3)],
            },
        ];
        let acks = acks_for(&batch);
        let r = |first, last| v1::SeqRange { first, last };
        assert_eq!(
            acks,
            vec![
                (
                    a,
                    v1::Ack {
                        ranges: vec![r(1, 5), r(9, 9)]
                    }
                ),
                (
                    b,
                    v1::Ack {
                        ranges: vec![r(7, 7)]
                    }
                ),
            ]
        );
    }

    #[test]
    fn bad_payloads_are_refused_with_reasons() {
        let p =
            |topic: &str, payload: Vec<u8>| Publish::new(topic.as_bytes().to_vec(), payload, false);
        let cases: Vec<(Publish, &str)> = vec![
            (p("fleet/dev-a/up/telemetry", vec![]), "empty"),
            (p("fleet/dev-a/up/telemetry", vec![9, 0]), "unknown_version"),
            (
                p("fleet/dev-a/up/telemetry", vec![1, 0xff, 0xff]),
                "malformed",
            ),
            (
                p("fleet/dev-a/up/telemetry", vec![1; 70 * 1024]),
                "oversize",
            ),
            (p("nope", vec![1]), "topic"),
        ];
        for (publish, want) in cases {
            match to_op(&publish) {
                Err((_, reason, _)) => assert_eq!(reason, want),
                Ok(_) => panic!("expected refusal {want}"),
            }
        }
        let good = codec::encode(
            Kind::Telemetry,
            &v1::Telemetry {
                samples: vec![sample(1)],
            },
        )
        .unwrap();
        assert!(matches!(
            to_op(&p("fleet/dev-a/up/telemetry", good)),
            Ok(Some(Routed::Ingest(IngestOp::Telemetry { .. })))
        ));
    }
}
