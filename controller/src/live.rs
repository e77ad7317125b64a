//! Live updates for the dashboard: whoever changes a device or a command tells the hub, the
//! hub fans the change out to every open event stream (`GET /api/v1/events`), and keeps the
//! fleet totals current (recomputed at most once a second, only after something changed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::model::devices::FleetSummary;
use crate::store::Store;
use crate::supervise::{Fatal, TaskResult};

/// Changes buffered per stream before a slow one is told it lagged (and resynchronizes).
const BUFFER: usize = 1024;
/// The fleet totals are recomputed at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// …and at least this often, for changes no one reported (retention, the CLI).
const SUMMARY_AT_LEAST: Duration = Duration::from_secs(30);

/// Something a dashboard may be showing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These devices changed (a sample, online state, hello, labels, revocation, …).
    Devices(Arc<[String]>),
    /// A command of this device changed status.
    Command { device: String, id: String },
    /// These devices reported new capabilities or unit states.
    Details(Arc<[String]>),
    /// A rollout changed (an operator acted on it, or it was created).
    Rollout(i64),
}

/// The fan-out point; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Change>,
    dirty: Arc<Notify>,
    summary: watch::Receiver<Option<FleetSummary>>,
    summary_tx: Arc<watch::Sender<Option<FleetSummary>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BUFFER);
        let (summary_tx, summary) = watch::channel(None);
        Self {
            tx,
            dirty: Arc::new(Notify::new()),
            summary,
            summary_tx: Arc::new(summary_tx),
        }
    }

    /// Reports changed devices (no-op for an empty list).
    pub fn devices_changed(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Change::Devices(ids.into()));
        self.dirty.notify_one();
    }

    /// Reports devices whose capabilities or unit states changed (no-op for an empty list).
    pub fn details_changed(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Change::Details(ids.into()));
        }
    }

    /// Reports a command whose status changed.
    pub fn command_changed(&self, device: &str, id: &str) {
        let _ = self.tx.send(Change::Command {
            device: device.to_owned(),
            id: id.to_owned(),
        });
    }

    /// Reports a rollout an operator changed (the runner decides it again at once).
    pub fn rollout_changed(&self, id: i64) {
        let _ = self.tx.send(Change::Rollout(id));
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// The fleet totals (None until first computed).
    pub fn summary(&self) -> watch::Receiver<Option<FleetSummary>> {
        self.summary.clone()
    }

    /// Keeps the fleet totals current until `shutdown`.
    pub async fn run(self, store: Store, shutdown: CancellationToken) -> TaskResult {
        loop {
            match store.fleet_summary().await {
                Ok(s) => {
                    self.summary_tx.send_if_modified(|cur| {
                        let changed = cur.as_ref() != Some(&s);
                        *cur = Some(s);
                        changed
                    });
                }
                Err(e) if e.is_fatal() => return Err(Fatal::new("the database is broken", e)),
                Err(e) => tracing::warn!(error = %e, "fleet summary failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(SUMMARY_EVERY) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.dirty.notified() => {}
                _ = tokio::time::sleep(SUMMARY_AT_LEAST) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_reach_every_subscriber_and_empty_reports_are_dropped() {
        let hub = Hub::new();
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        hub.devices_changed(Vec::new());
        hub.devices_changed(vec!["pi-1".into(), "pi-2".into()]);
        hub.command_changed("pi-1", "c1");
        for rx in [&mut a, &mut b] {
            assert_eq!(
                rx.recv().await.unwrap(),
                Change::Devices(vec!["pi-1".to_owned(), "pi-2".to_owned()].into())
            );
            assert_eq!(
                rx.recv().await.unwrap(),
                Change::Command {
                    device: "pi-1".into(),
                    id: "c1".into()
                }
            );
            assert!(rx.try_recv().is_err());
        }
    }
}
