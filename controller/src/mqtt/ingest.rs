//! Ingest: device messages routed by [`super::route`] → one writer task that commits them in
//! batched transactions (group commit) → acknowledgements of the committed sequence numbers
//! sent back to each device.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, Topic, codec};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use crate::config::IngestConfig;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::mqtt::downlink::Downlink;
use crate::store::{IngestOp, Store};
use crate::supervise::{Fatal, Health, Retry, TaskResult};

/// A message for a device.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: Topic,
    pub payload: Vec<u8>,
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
/// bounded queue pushes back on the devices meanwhile. A broken database ends the task.
pub async fn write(
    store: Store,
    mut queue: mpsc::Receiver<IngestOp>,
    out: Downlink,
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
        metrics.ingest_queue_depth.set(queue.len() as i64);
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
                    metrics.ingest_queue_depth.set(queue.len() as i64);
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
                        out.send(Outgoing {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> v1::Sample {
        crate::store::testkit::sample(seq, 0, 0.0, 0)
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
}
