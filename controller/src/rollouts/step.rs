//! The runner's decision for one rollout ([`step`]): the devices' reports (their commands'
//! receipts and progress) folded into their states, the engine's decision, and the device
//! changes and commands that carry it out ([`Changes`], shared with operator actions).

use std::collections::HashMap;
use std::time::Duration;

use pifleet_shared::DeviceId;

use super::engine::{Deadline, decide};
use super::service::{ATTEMPTS, RUNNER, RolloutError, load};
use super::spec::RolloutSpec;
use super::state::{DeviceReport, DeviceState};
use super::stored::{Loaded, change_of, fields_of};
use super::view::DeviceView;
use crate::commands::deploy::{deploy_action, new_command, rollback_action};
use crate::store::rollouts::{DeviceChange, RolloutSave, Saved};
use crate::store::{NewCommand, ReleaseRow, Store};

/// What one decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stepped {
    /// When to look again without a report.
    pub next: Option<i64>,
    /// The decision was written (the rollout changed).
    pub written: bool,
    /// It created deploy or revert commands, to send now.
    pub sent: bool,
}

/// One decision of the runner for rollout `id` at `now`: folds the devices' reports
/// (their commands' receipts and progress) into their states, lets the engine decide, and
/// writes the outcome with the deploy and revert commands it needs.
pub async fn step(store: &Store, id: i64, now: i64) -> Result<Stepped, RolloutError> {
    for _ in 0..ATTEMPTS {
        let l = load(store, id).await?;
        let commands: HashMap<String, CommandState> = store
            .rollout_command_states(id)
            .await?
            .into_iter()
            .map(|(device, status, reason, stderr)| {
                let journal = stderr
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                (
                    device,
                    CommandState {
                        status,
                        reason,
                        journal,
                    },
                )
            })
            .collect();
        let mut devices = l.devices.clone();
        let mut reasons: HashMap<String, (String, String)> = HashMap::new();
        for (device, row) in devices.iter_mut().zip(&l.rows) {
            let was = device.state;
            for (report, why) in reports(was, row.phase.as_deref(), commands.get(&row.device_id)) {
                if device.apply_report(report, now)
                    && let Some(why) = why
                {
                    reasons.insert(row.device_id.clone(), why);
                }
            }
            if was == DeviceState::Reverting && device.state == DeviceState::Healthy {
                // The revert failed before changing anything: do not send it again.
                device.revertible = false;
            }
        }
        let mut view = l.view;
        let decision = decide(&l.spec, &view, &devices, now);
        decision.apply(&mut view, &mut devices, now);
        for e in &decision.expired {
            let why = match e.deadline {
                Deadline::Delivery => format!(
                    "did not start downloading within the delivery deadline ({} s); the \
                     deploy was withdrawn if it had not gone out",
                    l.spec.settings().delivery_deadline_secs
                ),
                Deadline::Install => format!(
                    "no result within the install deadline ({} s)",
                    l.spec.settings().install_deadline_secs
                ),
            };
            reasons.insert(e.device.as_str().to_owned(), (why, String::new()));
        }
        let mut writer = Changes::new(store, &l);
        writer.reasons = reasons;
        writer.deploy(&decision.deploy, &l.spec).await?;
        writer.revert(&decision.revert, &mut devices).await?;
        let (changes, commands) = writer.finish(&devices);
        let view_changed = view != l.view;
        if changes.is_empty() && !view_changed {
            if decision.next_check_at_ms != l.row.next_check_at {
                store
                    .set_rollout_next_check(id, decision.next_check_at_ms)
                    .await?;
            }
            return Ok(Stepped {
                next: decision.next_check_at_ms,
                written: false,
                sent: false,
            });
        }
        let fields = fields_of(&view, decision.next_check_at_ms);
        let saved = store
            .save_rollout(
                id,
                l.row.version,
                &RolloutSave {
                    fields: Some(&fields),
                    devices: &changes,
                    commands: &commands,
                    actor: RUNNER,
                    reason: decision.reason.as_deref(),
                },
            )
            .await?;
        if saved == Saved::Written {
            // Something changed: the next decision may follow at once (a batch that just
            // passed sends the next one).
            return Ok(Stepped {
                next: Some(now),
                written: true,
                sent: !commands.is_empty(),
            });
        }
    }
    Err(RolloutError::Busy(id))
}

/// A rollout device's latest command, as the runner reads it.
#[derive(Debug, Clone)]
struct CommandState {
    status: String,
    reason: Option<String>,
    journal: String,
}

type Why = Option<(String, String)>;

/// The reports a device's stored progress and command status amount to, in order.
fn reports(
    state: DeviceState,
    phase: Option<&str>,
    cmd: Option<&CommandState>,
) -> Vec<(DeviceReport, Why)> {
    let mut out = Vec::new();
    let why = |c: &CommandState| Some((c.reason.clone().unwrap_or_default(), c.journal.clone()));
    if state == DeviceState::Reverting {
        if let Some(c) = cmd {
            match c.status.as_str() {
                "succeeded" => out.push((DeviceReport::Reverted, None)),
                "failed" | "rejected" => {
                    let reason = c.reason.clone().unwrap_or_default();
                    let report = if reason.starts_with("failed_unrecoverable") {
                        DeviceReport::FailedUnrecoverable
                    } else {
                        DeviceReport::Failed
                    };
                    out.push((
                        report,
                        Some((format!("revert failed: {reason}"), c.journal.clone())),
                    ));
                }
                _ => {}
            }
        }
        return out;
    }
    match phase {
        Some("downloading") => out.push((DeviceReport::Downloading, None)),
        Some("installing") => {
            out.push((DeviceReport::Downloading, None));
            out.push((DeviceReport::Installing, None));
        }
        _ => {}
    }
    let Some(c) = cmd else {
        return out;
    };
    match c.status.as_str() {
        "accepted" | "running" => out.push((DeviceReport::Downloading, None)),
        "succeeded" => out.push((DeviceReport::Healthy, None)),
        "failed" => {
            let reason = c.reason.as_deref().unwrap_or_default();
            let report = if reason.starts_with("rolled_back") {
                DeviceReport::RolledBack
            } else if reason.starts_with("failed_unrecoverable") {
                DeviceReport::FailedUnrecoverable
            } else {
                DeviceReport::Failed
            };
            out.push((report, why(c)));
        }
        "rejected" => out.push((
            DeviceReport::Failed,
            Some((
                format!(
                    "refused by the device: {}",
                    c.reason.as_deref().unwrap_or_default()
                ),
                String::new(),
            )),
        )),
        _ => {}
    }
    out
}

/// Builds a rollout's device changes and the commands they need.
pub(super) struct Changes<'a> {
    store: &'a Store,
    l: &'a Loaded,
    release: Option<ReleaseRow>,
    commands: Vec<NewCommand>,
    command_of: HashMap<String, String>,
    reasons: HashMap<String, (String, String)>,
}

impl<'a> Changes<'a> {
    pub(super) fn new(store: &'a Store, l: &'a Loaded) -> Self {
        Self {
            store,
            l,
            release: None,
            commands: Vec::new(),
            command_of: HashMap::new(),
            reasons: HashMap::new(),
        }
    }

    async fn release(&mut self) -> Result<ReleaseRow, RolloutError> {
        if let Some(r) = &self.release {
            return Ok(r.clone());
        }
        let id = self.l.row.release_id;
        let r = self
            .store
            .release(id)
            .await?
            .ok_or(RolloutError::ReleaseNotFound(id))?;
        self.release = Some(r.clone());
        Ok(r)
    }

    /// Deploy commands for `ids`: each may wait for its device until the delivery deadline
    /// and has the install deadline (plus the health gate, twice) to answer.
    async fn deploy(&mut self, ids: &[DeviceId], spec: &RolloutSpec) -> Result<(), RolloutError> {
        if ids.is_empty() {
            return Ok(());
        }
        let release = self.release().await?;
        let action = deploy_action(&release, false)?;
        let s = spec.settings();
        let ttl = Duration::from_secs(u64::from(s.delivery_deadline_secs));
        let gate = u64::from(release.health.start_timeout_s) + u64::from(release.health.soak_s);
        let answer = Duration::from_secs(u64::from(s.install_deadline_secs) + 2 * gate + 60);
        for id in ids {
            let cmd = new_command(id.as_str(), action.clone(), ttl, answer);
            self.command_of
                .insert(id.as_str().to_owned(), cmd.id.to_string());
            self.commands.push(cmd);
        }
        Ok(())
    }

    /// Revert commands for `ids` (now `reverting`) back to the release each ran before; a
    /// device whose earlier release the controller no longer has stays healthy, not
    /// revertible, with the reason.
    pub(super) async fn revert(
        &mut self,
        ids: &[DeviceId],
        devices: &mut [DeviceView],
    ) -> Result<(), RolloutError> {
        let app = self.l.row.app.clone();
        for id in ids {
            let previous = self
                .l
                .rows
                .iter()
                .find(|r| r.device_id == id.as_str())
                .and_then(|r| r.previous_release)
                .and_then(|r| u64::try_from(r).ok());
            let target = match previous {
                Some(n) => self.store.release_by_number(&app, n).await?,
                None => None,
            };
            let action = target.as_ref().map(rollback_action).transpose()?;
            match action {
                Some(action) => {
                    let release = target.as_ref().map_or(0, |r| r.release);
                    let gate = target.as_ref().map_or(0, |r| {
                        u64::from(r.health.start_timeout_s) + u64::from(r.health.soak_s)
                    });
                    let cmd = new_command(
                        id.as_str(),
                        action,
                        Duration::from_secs(u64::from(
                            self.l.spec.settings().delivery_deadline_secs,
                        )),
                        Duration::from_secs(900 + 2 * gate),
                    );
                    self.command_of
                        .insert(id.as_str().to_owned(), cmd.id.to_string());
                    self.reasons.insert(
                        id.as_str().to_owned(),
                        (format!("reverting to release {release}"), String::new()),
                    );
                    self.commands.push(cmd);
                }
                None => {
                    if let Some(d) = devices.iter_mut().find(|d| &d.id == id) {
                        d.state = DeviceState::Healthy;
                        d.revertible = false;
                    }
                    self.reasons.insert(
                        id.as_str().to_owned(),
                        (
                            "kept this release: the controller has no earlier release to \
                             revert to"
                                .into(),
                            String::new(),
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// The device changes against what was read, and the commands to create.
    pub(super) fn finish(self, devices: &[DeviceView]) -> (Vec<DeviceChange>, Vec<NewCommand>) {
        let mut changes = Vec::new();
        for ((before, after), row) in self.l.devices.iter().zip(devices).zip(&self.l.rows) {
            let id = after.id.as_str();
            let reason = self.reasons.get(id).cloned();
            let command = self.command_of.get(id).cloned();
            let mut change = match change_of(before, after) {
                Some(c) => c,
                None if reason.is_some() => DeviceChange {
                    device_id: id.to_owned(),
                    from: before.state.as_str().to_owned(),
                    state: after.state.as_str().to_owned(),
                    queued_at: after.queued_at_ms,
                    started_at: after.started_at_ms,
                    finished_at: after.finished_at_ms,
                    revertible: after.revertible,
                    command_id: None,
                    reason: None,
                    cancel: None,
                },
                None => continue,
            };
            change.command_id = command;
            change.reason = reason;
            if matches!(
                after.state,
                DeviceState::Unreachable | DeviceState::Untouched
            ) && before.state != after.state
            {
                change.cancel = row.command_id.clone();
            }
            changes.push(change);
        }
        (changes, self.commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(status: &str, reason: Option<&str>) -> CommandState {
        CommandState {
            status: status.into(),
            reason: reason.map(str::to_owned),
            journal: "last lines".into(),
        }
    }

    #[test]
    fn receipts_and_progress_become_reports() {
        use DeviceReport as R;
        use DeviceState as S;
        let only = |v: Vec<(R, Why)>| v.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        assert_eq!(only(reports(S::Queued, None, None)), []);
        assert_eq!(only(reports(S::Queued, None, Some(&cmd("sent", None)))), []);
        assert_eq!(
            only(reports(
                S::Queued,
                Some("installing"),
                Some(&cmd("running", None))
            )),
            [R::Downloading, R::Installing, R::Downloading]
        );
        assert_eq!(
            only(reports(S::Installing, None, Some(&cmd("succeeded", None)))),
            [R::Healthy]
        );
        let cases = [
            ("rolled_back: release 3 of web failed: …", R::RolledBack),
            (
                "failed_unrecoverable: release 3 of web: …",
                R::FailedUnrecoverable,
            ),
            ("download: connection refused", R::Failed),
        ];
        for (reason, want) in cases {
            let r = reports(S::Installing, None, Some(&cmd("failed", Some(reason))));
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].0, want, "{reason}");
            assert_eq!(
                r[0].1,
                Some((reason.to_owned(), "last lines".to_owned())),
                "the reason and journal go with the failure"
            );
        }
        let refused = reports(
            S::Queued,
            None,
            Some(&cmd("rejected", Some("lower release"))),
        );
        assert_eq!(refused[0].0, R::Failed);
        assert!(
            refused[0]
                .1
                .as_ref()
                .unwrap()
                .0
                .contains("refused by the device")
        );
        assert_eq!(
            only(reports(S::Queued, None, Some(&cmd("expired", None)))),
            []
        );
        // A revert's receipt.
        assert_eq!(
            only(reports(S::Reverting, None, Some(&cmd("succeeded", None)))),
            [R::Reverted]
        );
        assert_eq!(
            only(reports(
                S::Reverting,
                None,
                Some(&cmd("failed", Some("disk")))
            )),
            [R::Failed]
        );
    }
}
