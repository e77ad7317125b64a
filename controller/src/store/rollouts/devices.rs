//! A device's side of rollouts: its architecture and reported apps (what compatibility is
//! decided from) and the rollouts it is in.

use super::DeviceFacts;
use super::DeviceRolloutRow;
use crate::store::{Store, StoreError};

impl Store {
    /// Every unrevoked device's architecture and reported apps.
    pub async fn device_facts(&self) -> Result<Vec<DeviceFacts>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(
            "SELECT id, arch, apps FROM devices WHERE revoked_at IS NULL"
        )
        .fetch_all(ex)
        .await)?)
    }

    /// The apps a device reported (JSON) and when; `None` for an unknown device.
    pub async fn device_apps(
        &self,
        device: &str,
    ) -> Result<Option<(Option<String>, Option<i64>)>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(
            "SELECT apps, apps_at FROM devices WHERE id = $1"
        )
        .bind(device)
        .fetch_optional(ex)
        .await)?)
    }

    /// The rollouts a device is in, newest first, with the rollout's app, release and status.
    pub async fn device_rollout_list(
        &self,
        device: &str,
        limit: i64,
    ) -> Result<Vec<DeviceRolloutRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(concat!(
            "SELECT d.rollout_id, r.app, r.release, r.status, d.state, d.reason, d.journal, ",
            "d.finished_at FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id ",
            "WHERE d.device_id = $1 ORDER BY d.rollout_id DESC LIMIT $2"
        ))
        .bind(device)
        .bind(limit)
        .fetch_all(ex)
        .await)?)
    }
}
