//! Which targeted devices can take a release, from what their agents report: the apps
//! `[apps.NAME]` allowlists (and the release each runs) and the machine architecture.
//! Devices that cannot take it are `incompatible`: outside every batch, never failures.

use std::collections::{HashMap, HashSet};

use pifleet_shared::proto::v1::AppState;
use serde::Serialize;

use crate::commands::dispatch::{Resolved, Targets, resolve_targets};
use crate::store::rollouts::DeviceFacts;
use crate::store::{ReleaseRow, Store};

use super::RolloutError;

/// One targeted device and whether it can take the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlannedDevice {
    pub device: String,
    /// Why it cannot take the release; `None` when it can.
    pub incompatible: Option<String>,
    /// The release of the app it runs now, if any.
    pub current_release: Option<u64>,
    /// An abort with revert can send it back to `current_release` (the controller still
    /// has that release).
    pub revertible: bool,
}

/// The targeted devices, in rollout order (the canary first).
#[derive(Debug, Clone)]
pub struct Plan {
    pub devices: Vec<PlannedDevice>,
    pub resolved: Resolved,
}

impl Plan {
    pub fn compatible(&self) -> impl Iterator<Item = &PlannedDevice> {
        self.devices.iter().filter(|d| d.incompatible.is_none())
    }

    pub fn compatible_count(&self) -> usize {
        self.compatible().count()
    }
}

/// Resolves `targets` now and judges each device against `release`.
pub async fn plan(
    store: &Store,
    release: &ReleaseRow,
    targets: &Targets,
) -> Result<Plan, RolloutError> {
    let resolved = resolve_targets(store, targets).await?;
    let facts: HashMap<String, DeviceFacts> = store
        .device_facts()
        .await?
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect();
    let kept: HashSet<u64> = store
        .list_releases(Some(&release.app))
        .await?
        .into_iter()
        .map(|r| r.release)
        .collect();
    let devices = resolved
        .devices
        .iter()
        .map(|id| judge(id, facts.get(id), release, &kept))
        .collect();
    Ok(Plan { devices, resolved })
}

fn judge(
    id: &str,
    facts: Option<&DeviceFacts>,
    release: &ReleaseRow,
    kept: &HashSet<u64>,
) -> PlannedDevice {
    let mut planned = PlannedDevice {
        device: id.to_owned(),
        incompatible: None,
        current_release: None,
        revertible: false,
    };
    let apps: Option<Vec<AppState>> = facts
        .and_then(|f| f.apps.as_deref())
        .and_then(|json| serde_json::from_str(json).ok());
    let Some(apps) = apps else {
        planned.incompatible = Some(
            "its agent has not reported its apps (an agent older than deployments, or never \
             connected)"
                .into(),
        );
        return planned;
    };
    let Some(app) = apps.iter().find(|a| a.app == release.app) else {
        planned.incompatible = Some(format!(
            "its agent.toml does not allowlist the app ([apps.{}])",
            release.app
        ));
        return planned;
    };
    let arch = facts.and_then(|f| f.arch.as_deref());
    if !release.arches.is_empty() {
        match arch {
            Some(a) if release.arches.iter().any(|r| r == a) => {}
            Some(a) => {
                planned.incompatible = Some(format!(
                    "it is {a}; the release is built for {}",
                    release.arches.join(", ")
                ));
                return planned;
            }
            None => {
                planned.incompatible = Some(format!(
                    "its architecture is unknown; the release is built for {}",
                    release.arches.join(", ")
                ));
                return planned;
            }
        }
    }
    planned.current_release = app.current;
    planned.revertible = app
        .current
        .is_some_and(|c| c != release.release && kept.contains(&c));
    planned
}

#[cfg(test)]
mod tests {
    use pifleet_shared::release::HealthSpec;

    use super::*;
    use crate::store::ReleaseSource;

    fn release(arches: &[&str]) -> ReleaseRow {
        ReleaseRow {
            id: 1,
            app: "web".into(),
            release: 5,
            version: "1".into(),
            archive_sha256: String::new(),
            archive_size: 0,
            unpacked_size: 0,
            entries: 0,
            arches: arches.iter().map(|s| (*s).to_owned()).collect(),
            health: HealthSpec::default(),
            hooks: vec![],
            key_id: String::new(),
            manifest_sha256: String::new(),
            source: ReleaseSource::Upload { file_name: None },
            created_at: 0,
            created_by: String::new(),
        }
    }

    fn facts(arch: Option<&str>, apps: Option<&str>) -> DeviceFacts {
        DeviceFacts {
            id: "pi-1".into(),
            arch: arch.map(str::to_owned),
            apps: apps.map(str::to_owned),
        }
    }

    #[test]
    fn devices_are_judged_by_their_apps_and_architecture() {
        let kept: HashSet<u64> = [3, 5].into();
        let web =
            r#"[{"app":"web","unit":"web.service","current":3,"current_dir":"3-aa","kept":[3]}]"#;
        let other =
            r#"[{"app":"kiosk","unit":"k.service","current":null,"current_dir":null,"kept":[]}]"#;
        // (arch, apps, the release's arches, why incompatible, revertible)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
            Option<&'a str>,
            bool,
        );
        let cases: [Case; 6] = [
            (Some("aarch64"), Some(web), &["aarch64"], None, true),
            (Some("armv7l"), Some(web), &[], None, true),
            (
                Some("armv7l"),
                Some(web),
                &["aarch64"],
                Some("it is armv7l"),
                false,
            ),
            (
                None,
                Some(web),
                &["aarch64"],
                Some("architecture is unknown"),
                false,
            ),
            (Some("aarch64"), Some(other), &[], Some("[apps.web]"), false),
            (
                Some("aarch64"),
                None,
                &[],
                Some("has not reported its apps"),
                false,
            ),
        ];
        for (arch, apps, arches, why, revertible) in cases {
            let p = judge("pi-1", Some(&facts(arch, apps)), &release(arches), &kept);
            match why {
                None => assert_eq!(p.incompatible, None, "{arch:?} {arches:?}"),
                Some(w) => assert!(
                    p.incompatible.as_deref().is_some_and(|i| i.contains(w)),
                    "{p:?} should say {w}"
                ),
            }
            assert_eq!(p.revertible, revertible, "{p:?}");
        }
        // Running a release the controller no longer has: nothing to revert to.
        let gone = r#"[{"app":"web","unit":"w","current":2,"current_dir":"2-bb","kept":[2]}]"#;
        let p = judge("pi-1", Some(&facts(None, Some(gone))), &release(&[]), &kept);
        assert_eq!((p.current_release, p.revertible), (Some(2), false));
    }
}
