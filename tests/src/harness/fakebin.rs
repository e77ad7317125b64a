//! Fake `systemctl`, `journalctl` and `reboot` for the agent's commands: they record each
//! call and print known output.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Fake `systemctl`, `journalctl` and `reboot` in a directory of their own (to be used as the
/// agent's `[commands] path`): each appends one line `<program> <args…>` to a shared calls
/// file and prints a fixed, known output.
#[derive(Debug, Clone)]
pub struct FakeBin {
    /// The directory holding the fakes.
    pub dir: PathBuf,
    /// Where every call is recorded, one line per call.
    pub calls: PathBuf,
}

/// What the fake `journalctl` prints (whatever its arguments).
pub const FAKE_JOURNAL: &str = "2025-01-01T00:00:00+0000 pi kiosk[1]: started\n\
    2025-01-01T00:00:01+0000 pi kiosk[1]: serving on :8080\n";

/// Writes the fakes into `dir` (created if needed).
pub fn fake_bin(dir: &Path) -> Result<FakeBin> {
    std::fs::create_dir_all(dir)?;
    let calls = dir.join("calls.log");
    std::fs::write(&calls, "")?;
    let journal_lines: String = FAKE_JOURNAL
        .lines()
        .map(|l| format!("echo '{l}'\n"))
        .collect();
    let fakes = [
        ("systemctl", "echo \"fake systemctl $*\"\n".to_owned()),
        ("journalctl", journal_lines),
        ("reboot", "echo \"fake reboot\"\n".to_owned()),
    ];
    let fb = FakeBin {
        dir: dir.to_owned(),
        calls,
    };
    for (name, out) in fakes {
        fb.write_script(name, &out)?;
    }
    Ok(fb)
}

impl FakeBin {
    /// Writes an executable `#!/bin/sh` script `name` in the fake directory that first records
    /// `<name> <args…>` in the calls file, then runs `body`. Returns its path.
    pub fn write_script(&self, name: &str, body: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&tmp)?;
            write!(
                f,
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}",
                self.calls.display()
            )?;
            f.sync_all()?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        // Renamed into place: never executed while still open for writing (ETXTBSY).
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Replaces the fake `systemctl` with one whose units start and stay up: `show`
    /// reports any unit active and running with no restarts (what an app's health gate
    /// waits for); other calls print `fake systemctl <args…>` as before.
    pub fn units_start(&self) -> Result<PathBuf> {
        self.write_script(
            "systemctl",
            "case \"$1\" in\n\
             show) printf 'ActiveState=active\\nSubState=running\\nNRestarts=0\\nResult=success\\n' ;;\n\
             *) echo \"fake systemctl $*\" ;;\n\
             esac\n",
        )
    }

    /// Every recorded call made for a command, in order. The agent's own reads of its
    /// allowlisted units' states (`systemctl show …`, every few seconds and after service
    /// commands) are left out: they are not commands.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("systemctl show "))
            .map(str::to_owned)
            .collect()
    }
}
