//! SQL for rollouts: their rows, their devices, their history. Every change to a rollout
//! is conditional on the version it was decided from (and each device change on the state
//! it was decided from), so the runner, the API and the command line never overwrite each
//! other: a change that lost is reported as [`Saved::Stale`] and decided again.

mod devices;
mod reports;

pub(super) use reports::{record_guard_rollback, record_progress};

use super::commands::{NewCommand, cancel_if_queued, insert_command_rows};
use super::{Store, StoreError, now_ms};

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
        let release: Option<(String, i64)> =
            sqlx::query_as("SELECT app, release FROM releases WHERE id = ?")
                .bind(r.release_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((app, number)) = release else {
            return Ok(None);
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (release_id, app, release, selector, settings, status, batch, \
             revert_on_abort, version, reason, approval_id, created_by, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?, ?) RETURNING id",
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
        .fetch_one(&mut *tx)
        .await?;
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
        sqlx::query("DELETE FROM rollout_devices WHERE rollout_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_devices(&mut tx, id, devices).await?;
        insert_event(&mut tx, id, now, actor, reason).await?;
        tx.commit().await?;
        Ok(Saved::Written)
    }

    /// A rollout's version (bumped by every change); `None` when it does not exist.
    pub async fn rollout_version(&self, id: i64) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM rollouts WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.writer)
                .await?,
        )
    }

    /// Rollouts counted by status and pause cause (empty for none).
    pub async fn rollout_status_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, COALESCE(pause_cause, ''), COUNT(*) FROM rollouts \
             GROUP BY status, COALESCE(pause_cause, '')",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Records the approval request a rollout waits for.
    pub async fn set_rollout_approval(&self, id: i64, approval: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE rollouts SET approval_id = ?, version = version + 1 WHERE id = ?")
            .bind(approval)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// One rollout.
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        Ok(sqlx::query_as(rollout_select!("WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// One rollout, read through the writer (the latest committed state, for deciding).
    pub async fn rollout_for_update(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        Ok(sqlx::query_as(rollout_select!("WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.writer)
            .await?)
    }

    /// Rollouts, newest first; only those in `status` when given, of `release_id` when given.
    pub async fn list_rollouts(
        &self,
        status: Option<&str>,
        release_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        Ok(sqlx::query_as(rollout_select!(
            "WHERE (? IS NULL OR status = ?) AND (? IS NULL OR release_id = ?) \
             ORDER BY id DESC LIMIT ?"
        ))
        .bind(status)
        .bind(status)
        .bind(release_id)
        .bind(release_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Device counts by state of the rollouts `ids`.
    pub async fn rollout_state_counts(&self, ids: &[i64]) -> Result<Vec<StateCount>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT rollout_id, state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id IN (",
        );
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(") GROUP BY rollout_id, state");
        Ok(qb.build_query_as().fetch_all(&self.reader).await?)
    }

    /// A rollout's devices in rollout order; through the writer with `for_update`.
    pub async fn rollout_devices(
        &self,
        id: i64,
        for_update: bool,
    ) -> Result<Vec<RolloutDeviceRow>, StoreError> {
        let pool = if for_update {
            &self.writer
        } else {
            &self.reader
        };
        Ok(
            sqlx::query_as(device_select!("WHERE rollout_id = ? ORDER BY position"))
                .bind(id)
                .fetch_all(pool)
                .await?,
        )
    }

    /// A rollout's history, oldest first.
    pub async fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEventRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at, actor, text FROM rollout_events WHERE rollout_id = ? ORDER BY at, rowid",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Rollouts the runner must look at: running or paused ones, and any with a device
    /// still in flight (a paused, aborted or completed rollout's stragglers finish).
    pub async fn active_rollouts(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT r.id FROM rollouts r WHERE r.status IN ('running', 'paused') OR EXISTS ",
            "(SELECT 1 FROM rollout_devices d WHERE d.rollout_id = r.id AND d.state IN ",
            in_flight!(),
            ") ORDER BY r.id"
        ))
        .fetch_all(&self.writer)
        .await?)
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
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM rollouts WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if current != Some(version) {
            return Ok(Saved::Stale);
        }
        if let Some(fields) = fields
            && !update_rollout(&mut tx, id, version, fields, reason.unwrap_or(""), now).await?
        {
            return Ok(Saved::Stale);
        }
        for d in devices {
            let r = sqlx::query(
                "UPDATE rollout_devices SET state = ?, queued_at = ?, started_at = ?, \
                 finished_at = ?, revertible = ?, command_id = COALESCE(?, command_id), \
                 phase = CASE WHEN ? IS NULL THEN phase ELSE NULL END, \
                 reason = CASE WHEN ? THEN ? ELSE reason END, \
                 journal = CASE WHEN ? THEN ? ELSE journal END \
                 WHERE rollout_id = ? AND device_id = ? AND state = ?",
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
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() != 1 {
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
            sqlx::query("UPDATE rollouts SET version = version + 1, updated_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
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
        sqlx::query("UPDATE rollouts SET next_check_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The in-flight devices of a rollout with their command's status and reason, for the
    /// runner: (device, command status, command reason, command stderr).
    pub async fn rollout_command_states(
        &self,
        id: i64,
    ) -> Result<Vec<(String, String, Option<String>, Option<Vec<u8>>)>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT d.device_id, c.status, c.reason, c.stderr FROM rollout_devices d ",
            "JOIN commands c ON c.id = d.command_id WHERE d.rollout_id = ? AND d.state IN ",
            "('queued', 'downloading', 'installing', 'reverting', 'unreachable', 'untouched', ",
            "'timed_out')"
        ))
        .bind(id)
        .fetch_all(&self.writer)
        .await?)
    }
}

async fn insert_devices(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: i64,
    devices: &[NewRolloutDevice],
) -> Result<(), StoreError> {
    for d in devices {
        sqlx::query(
            "INSERT INTO rollout_devices (rollout_id, device_id, position, batch, state, \
             revertible, previous_release, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(&d.device_id)
        .bind(d.position)
        .bind(d.batch)
        .bind(&d.state)
        .bind(d.revertible)
        .bind(d.previous_release)
        .bind(&d.reason)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn update_rollout(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: i64,
    version: i64,
    f: &RolloutFields,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE rollouts SET status = ?, batch = ?, pause_cause = ?, waiver_batch = ?, \
         waiver_failures = ?, waiver_results = ?, revert_on_abort = ?, next_check_at = ?, \
         reason = CASE WHEN ? = '' THEN reason ELSE ? END, version = version + 1, \
         updated_at = ? WHERE id = ? AND version = ?",
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
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: i64,
    at: i64,
    actor: &str,
    text: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO rollout_events (rollout_id, at, actor, text) VALUES (?, ?, ?, ?)")
        .bind(id)
        .bind(at)
        .bind(actor)
        .bind(text)
        .execute(&mut **tx)
        .await?;
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
