//! Routing of device messages, in the device's own connection task: decoded and validated,
//! then handed to the ingest writer (through its bounded queue: a full queue slows the
//! device down), to the receipt handler or to the renewal handler. Decoding here spreads
//! the work over every core and keeps no shared queue of raw messages.

use pifleet_shared::command::SignedReceipt;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, Topic, codec};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::IngestOp;

/// Where a routed device message goes.
#[derive(Debug)]
enum Routed {
    Ingest(IngestOp),
    Receipt(DeviceId, SignedReceipt),
    Renew(DeviceId, v1::RenewRequest),
}

/// Where routed messages other than ingest operations go.
#[derive(Debug, Clone)]
pub struct Handlers {
    /// Signed command receipts, to the dispatcher.
    pub receipts: mpsc::Sender<(DeviceId, SignedReceipt)>,
    /// Certificate renewal requests, to [`crate::pki::renew::serve`].
    pub renewals: mpsc::Sender<(DeviceId, v1::RenewRequest)>,
}

/// Where device messages go; one per controller, shared by every connection.
#[derive(Debug, Clone)]
pub struct Router {
    queue: mpsc::Sender<IngestOp>,
    handlers: Handlers,
    metrics: Metrics,
}

/// Why a message could not be routed.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Undecodable or invalid: counted, logged and dropped; its sender should be closed.
    Refused(&'static str),
    /// A consumer is gone (shutdown).
    Closed,
}

impl Router {
    pub fn new(queue: mpsc::Sender<IngestOp>, handlers: Handlers, metrics: Metrics) -> Self {
        Self {
            queue,
            handlers,
            metrics,
        }
    }

    /// Routes one message a device published on `topic` (already checked against the
    /// device's ACL). Waits while the writer's queue is full.
    pub async fn route(&self, topic: &str, payload: &[u8]) -> Result<(), RouteError> {
        match to_op(topic, payload) {
            Ok(Some(Routed::Ingest(op))) => {
                if let IngestOp::UnitEvent { event, .. } = &op {
                    self.metrics
                        .watchdog_events
                        .with_label_values(&[event.kind.as_str()])
                        .inc();
                }
                self.queue.send(op).await.map_err(|_| RouteError::Closed)
            }
            Ok(Some(Routed::Receipt(device, receipt))) => self
                .handlers
                .receipts
                .send((device, receipt))
                .await
                .map_err(|_| RouteError::Closed),
            Ok(Some(Routed::Renew(device, req))) => {
                // A full queue means a flood: dropping is fine, the device asks again.
                match self.handlers.renewals.try_send((device, req)) {
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(RouteError::Closed),
                    _ => Ok(()),
                }
            }
            Ok(None) => Ok(()),
            Err((device, reason, detail)) => {
                self.metrics
                    .ingest_dropped
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(device = device.as_ref().map(DeviceId::as_str), reason, detail = %detail, "device message dropped");
                Err(RouteError::Refused(reason))
            }
        }
    }

    /// Tells ingest that `device`'s session began or ended. Only fails at shutdown, when
    /// there is no writer left to tell.
    pub async fn online(&self, device: &DeviceId, online: bool) {
        let op = IngestOp::Online {
            device: device.clone(),
            online,
        };
        let _ = self.queue.send(op).await;
    }
}

type Refusal = (Option<DeviceId>, &'static str, String);

fn to_op(topic_s: &str, payload: &[u8]) -> Result<Option<Routed>, Refusal> {
    let topic = Topic::parse(topic_s).map_err(|e| (None, "topic", format!("{topic_s:?}: {e}")))?;
    let device = topic.device;
    let bad = |e: codec::DecodeError| (Some(device.clone()), e.reason(), e.to_string());
    Ok(match topic.kind {
        Kind::Telemetry => {
            let t: v1::Telemetry = codec::decode(Kind::Telemetry, payload).map_err(bad)?;
            if t.samples.is_empty() {
                return Ok(None);
            }
            Some(Routed::Ingest(IngestOp::Telemetry {
                device,
                samples: t.samples,
            }))
        }
        Kind::Hello => {
            let hello: v1::Hello = codec::decode(Kind::Hello, payload).map_err(bad)?;
            Some(Routed::Ingest(IngestOp::Hello { device, hello }))
        }
        Kind::Result => {
            let r: SignedReceipt = codec::decode(Kind::Result, payload).map_err(bad)?;
            Some(Routed::Receipt(device, r))
        }
        Kind::Status => {
            // Informational: online state comes from the gateway's connection events.
            let _: v1::Status = codec::decode(Kind::Status, payload).map_err(bad)?;
            None
        }
        Kind::Event => match codec::decode(Kind::Event, payload).map_err(bad)? {
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
            let req: v1::RenewRequest = codec::decode(Kind::Csr, payload).map_err(bad)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::sample;

    #[test]
    fn bad_payloads_are_refused_with_reasons() {
        let p = |topic: &'static str, payload: Vec<u8>| (topic, payload);
        let cases: Vec<((&str, Vec<u8>), &str)> = vec![
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
            match to_op(publish.0, &publish.1) {
                Err((_, reason, _)) => assert_eq!(reason, want),
                Ok(_) => panic!("expected refusal {want}"),
            }
        }
        let good = codec::encode(
            Kind::Telemetry,
            &v1::Telemetry {
                samples: vec![sample(1, 0, 0.0, 0)],
            },
        )
        .unwrap();
        assert!(matches!(
            to_op("fleet/dev-a/up/telemetry", &good),
            Ok(Some(Routed::Ingest(IngestOp::Telemetry { .. })))
        ));
    }
}
