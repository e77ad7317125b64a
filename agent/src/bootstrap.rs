//! First boot from an SD-card image: an `agent.toml` that holds `[enroll]` — the
//! controller's address and a provisioning token — next to the device's allowlists
//! (`[commands]`, `[apps.NAME]`, `[metrics]`, `[watchdog]`) enrolls itself when the agent
//! starts, then runs. The device id comes from the hostname, or the hostname plus a suffix
//! from the board serial when the controller has it already; a busy controller's 429/503
//! is waited out as its Retry-After says. The file is then rewritten as a normal
//! configuration with the same allowlists and without the token.
//!
//! ```toml
//! [enroll]
//! controller = "https://fleet.example.org:8443"
//! token = "pft1.…"
//! interval_s = 10            # optional
//!
//! [commands]
//! services = ["kiosk.service"]
//! ```

use std::path::{Path, PathBuf};

use pifleet_io::toml_file::{self, ConfigError};
use serde::Deserialize;

use crate::enroll::{EnrollError, EnrollOptions};

/// A first-boot `agent.toml`: only `[enroll]` is read here; every other table is kept as
/// written and checked when the rewritten file is loaded.
#[derive(Debug, Deserialize)]
struct FirstBoot {
    enroll: EnrollSection,
}

/// Where to enroll.
#[derive(Debug, Default)]
struct EnrollSection {
    controller: String,
    token: String,
    interval_s: Option<u32>,
    serial_file: Option<PathBuf>,
}

/// Read by hand, like the simple sections of `agent.toml`: smaller than a derived reader.
impl crate::sections::Section for EnrollSection {
    const FIELDS: &'static [&'static str] = &["controller", "token", "interval_s", "serial_file"];
    const REQUIRED: &'static [&'static str] = &["controller", "token"];
    fn read<'de, A: serde::de::MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        match key {
            "controller" => self.controller = map.next_value()?,
            "token" => self.token = map.next_value()?,
            "interval_s" => self.interval_s = Some(map.next_value()?),
            "serial_file" => self.serial_file = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for EnrollSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::sections::read(d)
    }
}

/// Why a first boot could not enroll.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("enrolling from {path}: {source}")]
    Enroll {
        path: String,
        #[source]
        source: EnrollError,
    },
}

/// If `path` is a first-boot file (it has an `[enroll]` table), enrolls with it and
/// rewrites it; returns the device id. `None`: a normal configuration, nothing done.
pub async fn enroll_if_first_boot(path: &Path) -> Result<Option<String>, BootError> {
    let text = toml_file::read(path)?;
    let is_first_boot = text.lines().any(|l| l.trim_start().starts_with("[enroll]"));
    if !is_first_boot {
        return Ok(None);
    }
    let boot: FirstBoot = toml_file::parse(&text, path)?;
    let opts = EnrollOptions {
        controller: boot.enroll.controller,
        token: boot.enroll.token,
        config: path.to_owned(),
        device_id: None,
        interval_s: boot.enroll.interval_s,
        force: true,
        serial_file: boot.enroll.serial_file,
        // Everything but [enroll], as written.
        keep: Some(without_table(&text, "enroll")),
    };
    let id = crate::enroll::enroll(&opts)
        .await
        .map_err(|source| BootError::Enroll {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Some(id.to_string()))
}

/// `text` without the top-level table `[name]` (its header and lines up to the next
/// table), and without anything before the first table (top-level keys are the enrolled
/// configuration's own).
fn without_table(text: &str, name: &str) -> String {
    let header = format!("[{name}]");
    let mut out = String::new();
    let mut keep = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            keep = !t.starts_with(&header);
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enroll_table_is_left_out_and_the_rest_kept() {
        let text = "top = 1\n[enroll]\ntoken = \"t\"\n\n[watchdog]\npoll_s = 7\n# note\n\n[apps.web]\nunit = \"w\"\n";
        assert_eq!(
            without_table(text, "enroll"),
            "[watchdog]\npoll_s = 7\n# note\n\n[apps.web]\nunit = \"w\"\n"
        );
    }
}
