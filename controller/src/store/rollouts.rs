//! SQL for rollouts: their rows, their devices, their history. Every change to a rollout
//! is conditional on the version it was decided from (and each device change on the state
//! it was decided from), so the runner, the API and the command line never overwrite each
//! other: a change that lost is reported as [`Saved::Stale`] and decided again.

mod devices;
mod reports;

pub(super) use reports::{record_guard_rollback, record_progress};

use super::commands::{NewCommand, cancel_if_queued, insert_command_rows};
use super::{Store, StoreError, now_ms};
use crate::store::db::Tx;

/// A stored rollout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: i64,
    pub release_id: i64,
    pub app: String,
    pub release: i64,
    /// The targets as asked (JSON).
    pub selector: String,
    /// The rollout's settings (JSON).
    pub settings: String,
    pub status: String,
    pub batch: i64,
    pub pause_cause: Option<String>,
    pub waiver_batch: Option<i64>,
    pub waiver_failures: Option<i64>,
    pub waiver_results: Option<i64>,
    pub revert_on_abort: bool,
    pub version: i64,
    pub reason: Option<String>,
    pub approval_id: Option<String>,
    pub next_check_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One device of a rollout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutDeviceRow {
    pub rollout_id: i64,
    pub device_id: String,
    pub position: i64,
    pub batch: i64,
    pub state: String,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub revertible: bool,
    pub previous_release: Option<i64>,
    pub command_id: Option<String>,
    pub phase: Option<String>,
    pub bytes: Option<i64>,
    pub total: Option<i64>,
    pub reason: Option<String>,
    pub journal: Option<String>,
}

/// A rollout's changing fields, as the runner or an operator sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutFields {
    pub status: String,
    pub batch: i64,
    pub pause_cause: Option<String>,
    pub waiver: Option<(i64, i64, i64)>,
    pub revert_on_abort: bool,
    pub next_check_at: Option<i64>,
}

/// A device's change: from `from` (the state it was decided from) to `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChange {
    pub device_id: String,
    pub from: String,
    pub state: String,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub revertible: bool,
    /// `Some` replaces the device's command (a new deploy or revert).
    pub command_id: Option<String>,
    /// `Some` replaces the device's reason and journal.
    pub reason: Option<(String, String)>,
    /// Cancel this command if it has not gone out (an expired or untouched device's).
    pub cancel: Option<String>,
}

/// A new rollout's device.
#[derive(Debug, Clone)]
pub struct NewRolloutDevice {
    pub device_id: String,
    pub position: i64,
    pub batch: i64,
    pub state: String,
    pub revertible: bool,
    pub previous_release: Option<i64>,
    pub reason: Option<String>,
}

/// A rollout to create.
#[derive(Debug, Clone)]
pub struct NewRollout<'a> {
    pub release_id: i64,
    pub selector: &'a str,
    pub settings: &'a str,
    pub status: &'a str,
    pub approval_id: Option<&'a str>,
    pub created_by: &'a str,
    pub reason: &'a str,
}

/// One decided change of a rollout, for [`Store::save_rollout`].
#[derive(Debug, Clone, Copy)]
pub struct RolloutSave<'a> {
    pub fields: Option<&'a RolloutFields>,
    pub devices: &'a [DeviceChange],
    pub commands: &'a [NewCommand],
    pub actor: &'a str,
    pub reason: Option<&'a str>,
}

/// Whether a conditional change was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// The rollout or one of its devices changed since it was read: read and decide again.
    Stale,
}

/// Counts of a rollout's devices by state, for listings.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateCount {
    pub rollout_id: i64,
    pub state: String,
    pub n: i64,
}

/// What the rollout plan reads of a device: its architecture and reported apps (JSON).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceFacts {
    pub id: String,
    pub arch: Option<String>,
    pub apps: Option<String>,
}

/// A device's part in a rollout, for its page.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRolloutRow {
    pub rollout_id: i64,
    pub app: String,
    pub release: i64,
    pub status: String,
    pub state: String,
    pub reason: Option<String>,
    pub journal: Option<String>,
    pub finished_at: Option<i64>,
}

/// A line of a rollout's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutEventRow {
    pub at: i64,
    pub actor: String,
    pub text: String,
}

macro_rules! rollout_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, release_id, app, release, selector, settings, status, batch, pause_cause, ",
            "waiver_batch, waiver_failures, waiver_results, revert_on_abort, version, reason, ",
            "approval_id, next_check_at, created_by, created_at, updated_at FROM rollouts ",
            $tail
        )
    };
}

macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT rollout_id, device_id, position, batch, state, queued_at, started_at, ",
            "finished_at, revertible, previous_release, command_id, phase, bytes, total, ",
            "reason, journal FROM rollout_devices ",
            $tail
        )
    };
}

/// States of a device sent something and still expecting news, as SQL (a macro, so queries stay literals).
macro_rules! in_flight {
    () => {
        "('queued', 'downloading', 'installing', 'reverting')"
    };
}

impl Store {
    /// Stores a rollout, its devices and the first line of its history; returns its id.
    /// Refused (`Ok(None)`) when the release is gone: creation and release deletion take
    /// the same write lock, so a rollout never points at a deleted release.
    pub async fn insert_rollout(
        &self,
        r: &NewRollout<'_>,
        devices: &[NewRolloutDevice],
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let release: Option<(String, i64)> = in_tx!(tx, |ex| sqlx::query_as(
            "SELECT app, release FROM releases WHERE id = $1"
        )
        .bind(r.release_id)
        .fetch_optional(ex)
        .await)?;
        let Some((app, number)) = release else {
            return Ok(None);
        };
        let id: i64 = in_tx!(tx, |ex| {
            sqlx::query_scalar(
            "INSERT INTO rollouts (release_id, app, release, selector, settings, status, batch, \
             revert_on_abort, version, reason, approval_id, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, FALSE, 0, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(r.release_id)
        .bind(&app)
        .bind(number)
        .bind(r.selector)
        .bind(r.settings)
        .bind(r.status)
        .bind(r.reason)
        .bind(r.approval_id)
        .bind(r.created_by)
        .bind(now)
        .bind(now)
        .fetch_one(ex)
        .await
        })?;
        insert_devices(&mut tx, id, devices).await?;
        insert_event(&mut tx, id, now, r.created_by, r.reason).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Gives a rollout its devices and moves it to `fields` (an approval binds the device
    /// set at that moment), if it is still at `version`.
    pub async fn bind_rollout_devices(
        &self,
        id: i64,
        version: i64,
        fields: &RolloutFields,
        devices: &[NewRolloutDevice],
        actor: &str,
        reason: &str,
    ) -> Result<Saved, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        if !update_rollout(&mut tx, id, version, fields, reason, now).await? {
            return Ok(Saved::Stale);
        }
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM rollout_devices WHERE rollout_id = $1"
        )
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        insert_devices(&mut tx, id, devices).await?;
        insert_event(&mut tx, id, now, actor, reason).await?;
        tx.commit().await?;
        Ok(Saved::Written)
    }

    /// A rollout's version (bumped by every change); `None` when it does not exist.
    pub async fn rollout_version(&self, id: i64) -> Result<Option<i64>, StoreError> {
        Ok(writing!(self, |ex| sqlx::query_scalar(
            "SELECT version FROM rollouts WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    /// Rollouts counted by status and pause cause (empty for none).
    pub async fn rollout_status_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(
            "SELECT status, COALESCE(pause_cause, ''), COUNT(*) FROM rollouts \
             GROUP BY status, COALESCE(pause_cause, '')",
        )
        .fetch_all(ex)
        .await)?)
    }

    /// Records the approval request a rollout waits for.
    pub async fn set_rollout_approval(&self, id: i64, approval: &str) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE rollouts SET approval_id = $1, version = version + 1 WHERE id = $2"
        )
        .bind(approval)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// One rollout.
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(rollout_select!(
            "WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    /// One rollout, read through the writer (the latest committed state, for deciding).
    pub async fn rollout_for_update(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        Ok(writing!(self, |ex| sqlx::query_as(rollout_select!(
            "WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    /// Rollouts, newest first; only those in `status` when given, of `release_id` when given.
    pub async fn list_rollouts(
        &self,
        status: Option<&str>,
        release_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(rollout_select!(
            "WHERE ($1 IS NULL OR status = $2) AND ($3 IS NULL OR release_id = $4) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(status)
        .bind(status)
        .bind(release_id)
        .bind(release_id)
        .bind(limit)
        .fetch_all(ex)
        .await)?)
    }

    /// Device counts by state of the rollouts `ids`.
    pub async fn rollout_state_counts(&self, ids: &[i64]) -> Result<Vec<StateCount>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        reading!(self, |ex| {
            let mut qb = sqlx::QueryBuilder::<DB>::new(
                "SELECT rollout_id, state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id IN (",
            );
            let mut list = qb.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            qb.push(") GROUP BY rollout_id, state");
            Ok(qb.build_query_as().fetch_all(ex).await?)
        })
    }

    /// A rollout's devices in rollout order; through the writer with `for_update`.
    pub async fn rollout_devices(
        &self,
        id: i64,
        for_update: bool,
    ) -> Result<Vec<RolloutDeviceRow>, StoreError> {
        const SELECT: &str = device_select!("WHERE rollout_id = $1 ORDER BY position");
        Ok(if for_update {
            writing!(self, |ex| sqlx::query_as(SELECT)
                .bind(id)
                .fetch_all(ex)
                .await)?
        } else {
            reading!(self, |ex| sqlx::query_as(SELECT)
                .bind(id)
                .fetch_all(ex)
                .await)?
        })
    }

    /// A rollout's history, oldest first.
    pub async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEventRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(
            "SELECT at, actor, text FROM rollout_events WHERE rollout_id = $1 ORDER BY at, rowid",
        )
        .bind(id)
        .fetch_all(ex)
        .await)?)
    }

    /// Rollouts the runner must look at: running or paused ones, and any with a device
    /// still in flight (a paused, aborted or completed rollout's stragglers finish).
    pub async fn active_rollouts(&self) -> Result<Vec<i64>, StoreError> {
        Ok(writing!(self, |ex| sqlx::query_scalar(concat!(
            "SELECT r.id FROM rollouts r WHERE r.status IN ('running', 'paused') OR EXISTS ",
            "(SELECT 1 FROM rollout_devices d WHERE d.rollout_id = r.id AND d.state IN ",
            in_flight!(),
            ") ORDER BY r.id"
        ))
        .fetch_all(ex)
        .await)?)
    }

    /// Writes a decided change: the rollout's fields (if it is still at `version`), each
    /// device change (if the device is still in the state it was decided from), the new
    /// commands, and a line of history. All or nothing.
    pub async fn save_rollout(
        &self,
        id: i64,
        version: i64,
        save: &RolloutSave<'_>,
    ) -> Result<Saved, StoreError> {
        let RolloutSave {
            fields,
            devices,
            commands,
            actor,
            reason,
        } = *save;
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let current: Option<i64> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT version FROM rollouts WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        if current != Some(version) {
            return Ok(Saved::Stale);
        }
        if let Some(fields) = fields
            && !update_rollout(&mut tx, id, version, fields, reason.unwrap_or(""), now).await?
        {
            return Ok(Saved::Stale);
        }
        for d in devices {
            let r = in_tx!(tx, |ex| sqlx::query(
                "UPDATE rollout_devices SET state = $1, queued_at = $2, started_at = $3, \
                 finished_at = $4, revertible = $5, command_id = COALESCE($6, command_id), \
                 phase = CASE WHEN $7 IS NULL THEN phase ELSE NULL END, \
                 reason = CASE WHEN $8 THEN $9 ELSE reason END, \
                 journal = CASE WHEN $10 THEN $11 ELSE journal END \
                 WHERE rollout_id = $12 AND device_id = $13 AND state = $14",
            )
            .bind(&d.state)
            .bind(d.queued_at)
            .bind(d.started_at)
            .bind(d.finished_at)
            .bind(d.revertible)
            .bind(&d.command_id)
            .bind(&d.command_id)
            .bind(d.reason.is_some())
            .bind(d.reason.as_ref().map(|r| &r.0))
            .bind(d.reason.is_some())
            .bind(d.reason.as_ref().map(|r| &r.1))
            .bind(id)
            .bind(&d.device_id)
            .bind(&d.from)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
            if r != 1 {
                return Ok(Saved::Stale);
            }
            if let Some(command) = &d.cancel {
                cancel_if_queued(
                    &mut tx,
                    command,
                    &format!("rollout {id}: device {}", d.state),
                    now,
                )
                .await?;
            }
        }
        insert_command_rows(&mut tx, commands, now).await?;
        if fields.is_none() && !devices.is_empty() {
            in_tx!(tx, |ex| sqlx::query(
                "UPDATE rollouts SET version = version + 1, updated_at = $1 WHERE id = $2"
            )
            .bind(now)
            .bind(id)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        if let Some(reason) = reason.filter(|r| !r.is_empty()) {
            insert_event(&mut tx, id, now, actor, reason).await?;
        }
        tx.commit().await?;
        Ok(Saved::Written)
    }

    /// Sets when the runner looks at a rollout next (no version change: nothing a person
    /// sees changed).
    pub async fn set_rollout_next_check(&self, id: i64, at: Option<i64>) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE rollouts SET next_check_at = $1 WHERE id = $2"
        )
        .bind(at)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The in-flight devices of a rollout with their command's status and reason, for the
    /// runner: (device, command status, command reason, command stderr).
    pub async fn rollout_command_states(
        &self,
        id: i64,
    ) -> Result<Vec<(String, String, Option<String>, Option<Vec<u8>>)>, StoreError> {
        Ok(writing!(self, |ex| sqlx::query_as(concat!(
            "SELECT d.device_id, c.status, c.reason, c.stderr FROM rollout_devices d ",
            "JOIN commands c ON c.id = d.command_id WHERE d.rollout_id = $1 AND d.state IN ",
            "('queued', 'downloading', 'installing', 'reverting', 'unreachable', 'untouched', ",
            "'timed_out')"
        ))
        .bind(id)
        .fetch_all(ex)
        .await)?)
    }
}

async fn insert_devices(
    tx: &mut Tx,
    id: i64,
    devices: &[NewRolloutDevice],
) -> Result<(), StoreError> {
    for d in devices {
        in_tx!(*tx, |ex| sqlx::query(
            "INSERT INTO rollout_devices (rollout_id, device_id, position, batch, state, \
             revertible, previous_release, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&d.device_id)
        .bind(d.position)
        .bind(d.batch)
        .bind(&d.state)
        .bind(d.revertible)
        .bind(d.previous_release)
        .bind(&d.reason)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

async fn update_rollout(
    tx: &mut Tx,
    id: i64,
    version: i64,
    f: &RolloutFields,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let r = in_tx!(*tx, |ex| sqlx::query(
        "UPDATE rollouts SET status = $1, batch = $2, pause_cause = $3, waiver_batch = $4, \
         waiver_failures = $5, waiver_results = $6, revert_on_abort = $7, next_check_at = $8, \
         reason = CASE WHEN $9 = '' THEN reason ELSE $10 END, version = version + 1, \
         updated_at = $11 WHERE id = $12 AND version = $13",
    )
    .bind(&f.status)
    .bind(f.batch)
    .bind(&f.pause_cause)
    .bind(f.waiver.map(|w| w.0))
    .bind(f.waiver.map(|w| w.1))
    .bind(f.waiver.map(|w| w.2))
    .bind(f.revert_on_abort)
    .bind(f.next_check_at)
    .bind(reason)
    .bind(reason)
    .bind(now)
    .bind(id)
    .bind(version)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(r == 1)
}

async fn insert_event(
    tx: &mut Tx,
    id: i64,
    at: i64,
    actor: &str,
    text: &str,
) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(
        "INSERT INTO rollout_events (rollout_id, at, actor, text) VALUES ($1, $2, $3, $4)"
    )
    .bind(id)
    .bind(at)
    .bind(actor)
    .bind(text)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Keeps `in_flight!` the one spelling of the in-flight states the queries above repeat.
#[cfg(test)]
#[test]
fn in_flight_states_are_the_engines() {
    // The other queries name wider sets on purpose (late reports of expired devices).
    use crate::rollouts::DeviceState;
    let listed: Vec<&str> = in_flight!()
        .trim_matches(|c| c == '(' || c == ')')
        .split(", ")
        .map(|s| s.trim_matches('\''))
        .collect();
    let engine: Vec<&str> = DeviceState::ALL
        .into_iter()
        .filter(|s| !s.is_final() && *s != DeviceState::Pending)
        .map(DeviceState::as_str)
        .collect();
    assert_eq!(listed, engine);
}
