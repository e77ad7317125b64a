//! What the controller is told about commands on this device: the capabilities the local
//! allowlist grants (so the dashboard offers only those), and the state of the allowlisted
//! systemd units, read with `systemctl show` (an argv, through the configured path, like every
//! program the agent runs) every [`POLL`] and right after a service command.

use std::sync::Arc;
use std::time::Duration;

use pifleet_shared::codec;
use pifleet_shared::proto::v1::{
    Capabilities, Event, IntervalBounds, ScriptCapability, ServiceState,
};
use pifleet_shared::topic::Kind;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::commands::CommandsConfig;
use crate::commands::exec::{self, Invocation, Limits};

/// How often unit states are read when nothing prompts it.
pub const POLL: Duration = Duration::from_secs(15);
/// After a service command, a moment for the unit to settle before reading its state.
const SETTLE: Duration = Duration::from_millis(300);
/// Units per report: the event must fit its size limit whatever the configuration says.
const MAX_UNITS: usize = 64;

/// The capabilities `cfg` grants, cut down until the event fits its size limit.
pub fn capabilities(cfg: &CommandsConfig) -> Capabilities {
    let mut caps = Capabilities {
        ping: cfg.ping,
        reboot: cfg.reboot,
        services: cfg.services.clone(),
        journal_units: cfg.journal_units.clone(),
        scripts: cfg
            .scripts
            .iter()
            .map(|(name, s)| ScriptCapability {
                name: name.clone(),
                allowed_args: s.allowed_args.clone(),
            })
            .collect(),
        set_interval: cfg.set_interval.then_some(IntervalBounds {
            min_s: cfg.min_interval_s,
            max_s: cfg.max_interval_s,
        }),
    };
    let limit = Kind::Event.max_payload();
    loop {
        let fits = codec::encode(Kind::Event, &Event::Capabilities(caps.clone()))
            .is_ok_and(|b| b.len() <= limit);
        if fits {
            return caps;
        }
        // Halve the longest list; the agent still enforces the full allowlist.
        let lists = [
            caps.services.len(),
            caps.journal_units.len(),
            caps.scripts.len(),
        ];
        match lists.iter().enumerate().max_by_key(|(_, n)| **n) {
            Some((0, n)) if *n > 0 => caps.services.truncate(n / 2),
            Some((1, n)) if *n > 0 => caps.journal_units.truncate(n / 2),
            Some((2, n)) if *n > 0 => caps.scripts.truncate(n / 2),
            _ => return caps,
        }
    }
}

/// Parses `systemctl show --property=Id,ActiveState,SubState` output for several units:
/// blocks separated by blank lines, `Key=Value` lines in any order. Units without a complete
/// block are left out.
pub fn parse_show(text: &str, units: &[String]) -> Vec<ServiceState> {
    let mut states = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut active, mut sub) = (None, None, None);
        for line in block.lines() {
            match line.split_once('=') {
                Some(("Id", v)) => id = Some(v.trim()),
                Some(("ActiveState", v)) => active = Some(v.trim()),
                Some(("SubState", v)) => sub = Some(v.trim()),
                _ => {}
            }
        }
        if let (Some(id), Some(active), Some(sub)) = (id, active, sub)
            && units.iter().any(|u| u == id)
        {
            states.push(ServiceState {
                unit: id.to_owned(),
                active: active.to_owned(),
                sub: sub.to_owned(),
            });
        }
    }
    states.sort_by(|a, b| a.unit.cmp(&b.unit));
    states
}

/// Reads the units' states; `None` when systemctl cannot be run or fails.
pub async fn read_states(units: &[String], limits: &Limits) -> Option<Vec<ServiceState>> {
    let mut args = vec![
        "show".to_owned(),
        "--property=Id,ActiveState,SubState".to_owned(),
        "--".to_owned(),
    ];
    args.extend(units.iter().cloned());
    let inv = Invocation {
        program: "systemctl".into(),
        args,
    };
    let done = exec::run(&inv, limits).await;
    if done.outcome != pifleet_shared::command::Outcome::Succeeded {
        tracing::debug!(outcome = ?done.outcome, "cannot read service states");
        return None;
    }
    Some(parse_show(
        &String::from_utf8_lossy(&done.stdout.data),
        units,
    ))
}

/// Keeps `tx` holding the allowlisted units' current states until `shutdown`: reads them now,
/// every [`POLL`], and shortly after `poke` is notified. Does nothing without units.
pub async fn watch_states(
    cfg: CommandsConfig,
    poke: Arc<Notify>,
    tx: watch::Sender<Option<Vec<ServiceState>>>,
    shutdown: CancellationToken,
) {
    let mut units = cfg.services.clone();
    units.truncate(MAX_UNITS);
    if units.is_empty() {
        return;
    }
    let limits = Limits::from_config(&cfg);
    loop {
        if let Some(states) = read_states(&units, &limits).await {
            tx.send_if_modified(|cur| {
                let changed = cur.as_ref() != Some(&states);
                if changed {
                    *cur = Some(states);
                }
                changed
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            _ = poke.notified() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SETTLE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::ScriptConfig;

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn capabilities_follow_the_allowlist() {
        let mut cfg = CommandsConfig {
            reboot: true,
            services: units(&["kiosk.service"]),
            journal_units: units(&["kiosk.service", "ssh.service"]),
            ..CommandsConfig::default()
        };
        cfg.scripts.insert(
            "backup".into(),
            ScriptConfig {
                argv: units(&["/usr/local/bin/backup"]),
                allowed_args: units(&["--dry-run"]),
            },
        );
        let caps = capabilities(&cfg);
        assert!(caps.ping && caps.reboot);
        assert_eq!(caps.services, units(&["kiosk.service"]));
        assert_eq!(caps.journal_units.len(), 2);
        assert_eq!(caps.scripts[0].name, "backup");
        assert_eq!(caps.scripts[0].allowed_args, units(&["--dry-run"]));
        assert_eq!(caps.set_interval, None);
        cfg.set_interval = true;
        assert_eq!(
            capabilities(&cfg).set_interval,
            Some(IntervalBounds {
                min_s: cfg.min_interval_s,
                max_s: cfg.max_interval_s
            })
        );
    }

    #[test]
    fn huge_allowlists_are_cut_to_fit_the_event() {
        let services: Vec<String> = (0..2000)
            .map(|i| format!("unit-{i:04}-{}.service", "x".repeat(60)))
            .collect();
        let cfg = CommandsConfig {
            journal_units: services.clone(),
            services,
            ..CommandsConfig::default()
        };
        let caps = capabilities(&cfg);
        let bytes = codec::encode(Kind::Event, &Event::Capabilities(caps.clone())).unwrap();
        assert!(bytes.len() <= Kind::Event.max_payload());
        assert!(!caps.services.is_empty() && caps.services.len() < 2000);
        assert_eq!(caps.services[0], cfg.services[0]);
    }

    #[test]
    fn parses_systemctl_show_blocks_in_any_order() {
        let text = "ActiveState=active\nSubState=running\nId=kiosk.service\n\n\
                    Id=backup.service\nSubState=dead\nActiveState=inactive\n\n\
                    Id=other.service\nActiveState=failed\nSubState=failed\n\n\
                    Id=partial.service\nActiveState=active\n";
        let states = parse_show(
            text,
            &units(&["kiosk.service", "backup.service", "partial.service"]),
        );
        assert_eq!(
            states,
            vec![
                ServiceState {
                    unit: "backup.service".into(),
                    active: "inactive".into(),
                    sub: "dead".into()
                },
                ServiceState {
                    unit: "kiosk.service".into(),
                    active: "active".into(),
                    sub: "running".into()
                },
            ]
        );
        assert!(parse_show("", &units(&["kiosk.service"])).is_empty());
        assert!(parse_show("garbage\n\n=\n", &units(&["kiosk.service"])).is_empty());
    }

    #[tokio::test]
    async fn watcher_reads_states_through_the_configured_path_and_on_poke() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, "inactive dead\n").unwrap();
        // A fake systemctl: prints the unit's state from a file (argv only, no shell here:
        // the fake itself is a test fixture).
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nread a s < '{}'\nprintf 'Id=kiosk.service\\nActiveState=%s\\nSubState=%s\\n' \"$a\" \"$s\"\n",
                state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = CommandsConfig {
            services: units(&["kiosk.service"]),
            path: dir.path().display().to_string(),
            ..CommandsConfig::default()
        };
        let (tx, mut rx) = watch::channel(None);
        let poke = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_states(cfg, poke.clone(), tx, stop.clone()));
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rx.borrow_and_update().as_ref().unwrap()[0].active,
            "inactive"
        );
        std::fs::write(&state, "active running\n").unwrap();
        poke.notify_one();
        tokio::time::timeout(wait, rx.changed())
            .await
            .unwrap()
            .unwrap();
        let now = rx.borrow_and_update().clone().unwrap();
        assert_eq!(
            (now[0].active.as_str(), now[0].sub.as_str()),
            ("active", "running")
        );
        stop.cancel();
        tokio::time::timeout(wait, task).await.unwrap().unwrap();
    }
}
