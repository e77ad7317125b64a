//! Telemetry collection straight from `/proc` and `/sys`.
//!
//! Everything is read below a configurable root so tests can build a fake tree, and nothing
//! spawns a process (no `vcgencmd`): one sample costs a handful of small reads and one
//! statvfs(3) per real mount. A missing or unreadable file yields `None` or 0, never an error,
//! because devices differ (no thermal zone on a VM, no firmware node off a Pi).
//!
//! This module reads the files and assembles samples; `procfs.rs` parses their contents.

mod procfs;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pifleet_shared::proto::v1::{Disk, Hello, Sample};

use procfs::{CpuTimes, MemInfo, Mount, cpu_pct, parse_cpu_times, parse_loadavg, parse_meminfo};
use procfs::{parse_millidegrees, parse_model, parse_mounts, parse_net_dev, parse_os_release};
use procfs::{parse_throttled, parse_uptime};

/// At most this many disks and interfaces per sample, so a sample stays far below 64 KiB.
const MAX_ENTRIES: usize = 32;
/// The mount table is re-read every this many samples (a minute at the default interval):
/// it rarely changes and is the most expensive file to read.
const MOUNTS_EVERY: u32 = 6;
/// Longest hostname we report (DNS labels are at most 63 bytes).
const MAX_HOSTNAME: usize = 64;
/// Longest free-form text (OS name, kernel, model, mount point, agent version).
const MAX_TEXT: usize = 128;
/// Longest filesystem type or interface name (Linux limits interface names to 15 bytes).
const MAX_SHORT: usize = 32;

/// Thermal zone types that measure the SoC, preferred over any other zone.
const SOC_ZONES: &[&str] = &[
    "cpu-thermal",
    "cpu_thermal",
    "soc",
    "soc-thermal",
    "x86_pkg_temp",
];

/// Why a collector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("collection root {path} is not a readable directory")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Takes telemetry samples and builds the hello message; keeps the previous CPU counters so
/// each sample reports the CPU share since the one before.
#[derive(Debug)]
pub struct Collector {
    root: PathBuf,
    stat: PathBuf,
    meminfo: PathBuf,
    loadavg: PathBuf,
    uptime: PathBuf,
    net_dev: PathBuf,
    mounts: PathBuf,
    throttled: PathBuf,
    /// The chosen thermal zone's `temp` file, picked once at start.
    temp: Option<PathBuf>,
    prev_cpu: CpuTimes,
    /// Real mounts from the last read of the mount table, and samples since that read.
    mounts_cache: Vec<(Mount, PathBuf)>,
    mounts_age: u32,
    /// Reused read buffer, so a sample allocates little.
    buf: String,
}

impl Collector {
    /// `root` is the filesystem root to read /proc, /sys and /etc from: "/" in production, a
    /// temp dir in tests.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CollectError> {
        let root = root.into();
        let meta = fs::metadata(&root).map_err(|source| CollectError::Root {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CollectError::Root {
                path: root,
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Ok(Self {
            stat: root.join("proc/stat"),
            meminfo: root.join("proc/meminfo"),
            loadavg: root.join("proc/loadavg"),
            uptime: root.join("proc/uptime"),
            net_dev: root.join("proc/net/dev"),
            mounts: root.join("proc/self/mounts"),
            throttled: root.join("sys/devices/platform/soc/soc:firmware/get_throttled"),
            temp: choose_thermal_zone(&root.join("sys/class/thermal")),
            root,
            prev_cpu: CpuTimes::default(),
            mounts_cache: Vec::new(),
            mounts_age: 0,
            buf: String::with_capacity(4096),
        })
    }

    /// Reads the temperature from `path` (millidegrees Celsius) instead of the thermal zone
    /// picked at start. An unreadable or malformed file reports no temperature.
    pub fn set_temperature_file(&mut self, path: impl Into<PathBuf>) {
        self.temp = Some(path.into());
    }

    /// What this device is, sent on every (re)connect.
    pub fn hello(&self, agent_version: &str, interval_s: u32) -> Hello {
        let text = |rel: &str| read_text(&self.root.join(rel));
        let hostname = text("proc/sys/kernel/hostname")
            .or_else(|| text("etc/hostname"))
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        let os = text("etc/os-release")
            .or_else(|| text("usr/lib/os-release"))
            .and_then(|t| parse_os_release(&t))
            .unwrap_or_else(|| "Linux".to_owned());
        let kernel = text("proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        let model = fs::read(self.root.join("proc/device-tree/model"))
            .ok()
            .and_then(|b| parse_model(&b));
        Hello {
            agent_version: truncate(agent_version, MAX_TEXT),
            hostname: truncate(&hostname, MAX_HOSTNAME),
            os: truncate(&os, MAX_TEXT),
            kernel: truncate(&kernel, MAX_TEXT),
            arch: std::env::consts::ARCH.to_owned(),
            model: model.map(|m| truncate(&m, MAX_TEXT)),
            uptime_s: text("proc/uptime")
                .and_then(|t| parse_uptime(&t))
                .unwrap_or(0),
            interval_s,
        }
    }

    /// Takes one sample. `spool_dropped`/`spool_backlog` are copied into the sample.
    pub fn sample(
        &mut self,
        seq: u64,
        ts_ms: i64,
        spool_dropped: u64,
        spool_backlog: u64,
    ) -> Sample {
        let buf = &mut self.buf;

        let cpu = read_into(buf, &self.stat)
            .then(|| parse_cpu_times(buf))
            .flatten();
        let cpu_pct = match cpu {
            Some(now) => {
                let pct = cpu_pct(self.prev_cpu, now);
                self.prev_cpu = now;
                pct
            }
            None => 0.0,
        };

        let (load1, load5, load15) = read_into(buf, &self.loadavg)
            .then(|| parse_loadavg(buf))
            .flatten()
            .unwrap_or_default();

        let mem = if read_into(buf, &self.meminfo) {
            parse_meminfo(buf)
        } else {
            MemInfo::default()
        };

        let uptime_s = read_into(buf, &self.uptime)
            .then(|| parse_uptime(buf))
            .flatten()
            .unwrap_or(0);

        let mut nets = Vec::new();
        if read_into(buf, &self.net_dev) {
            parse_net_dev(buf, &mut nets);
        }

        if self.mounts_age == 0 {
            self.mounts_cache.clear();
            if read_into(buf, &self.mounts) {
                let real = parse_mounts(buf).into_iter().take(MAX_ENTRIES);
                self.mounts_cache.extend(real.map(|m| {
                    let path = self.root.join(m.mount.trim_start_matches('/'));
                    (m, path)
                }));
            }
        }
        self.mounts_age = (self.mounts_age + 1) % MOUNTS_EVERY;
        let mut disks = Vec::new();
        for (m, path) in &self.mounts_cache {
            if let Some((total_bytes, used_bytes)) = statvfs_usage(path) {
                disks.push(Disk {
                    mount: truncate(&m.mount, MAX_TEXT),
                    fs: truncate(&m.fs, MAX_SHORT),
                    total_bytes,
                    used_bytes,
                });
            }
        }

        let temp_c = self
            .temp
            .as_deref()
            .and_then(|p| read_into(buf, p).then(|| parse_millidegrees(buf)))
            .flatten();
        let throttled = read_into(buf, &self.throttled)
            .then(|| parse_throttled(buf))
            .flatten();

        Sample {
            seq,
            ts_ms,
            cpu_pct,
            load1,
            load5,
            load15,
            mem_total_bytes: mem.total,
            mem_used_bytes: mem.total.saturating_sub(mem.available),
            swap_total_bytes: mem.swap_total,
            swap_used_bytes: mem.swap_total.saturating_sub(mem.swap_free),
            disks,
            nets,
            temp_c,
            throttled,
            uptime_s,
            spool_dropped,
            spool_backlog,
        }
    }
}

/// Reads a whole file into `buf` (cleared first); false if it cannot be read.
fn read_into(buf: &mut String, path: &Path) -> bool {
    buf.clear();
    match fs::File::open(path) {
        Ok(mut f) => f.read_to_string(buf).is_ok(),
        Err(_) => false,
    }
}

/// Reads a small text file, `None` if missing or unreadable.
fn read_text(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
/// Total and used bytes of the filesystem holding `path`, via statvfs(3); `None` on error or
/// for an empty filesystem. Used = total − free, as `df` computes it.
// Block counts are u32 on 32-bit targets (armv7 Pis) and u64 elsewhere, hence `u64::from`.
#[allow(unsafe_code, clippy::useless_conversion)]
fn statvfs_usage(path: &Path) -> Option<(u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to writable memory
    // of the right type, which statvfs only writes to.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the memory was zero-initialised (a valid bit pattern for this plain C struct)
    // and statvfs succeeded, so it is fully filled in.
    let st = unsafe { st.assume_init() };
    let frsize = if st.f_frsize > 0 {
        u64::from(st.f_frsize)
    } else {
        u64::from(st.f_bsize)
    };
    let total = u64::from(st.f_blocks).saturating_mul(frsize);
    let free = u64::from(st.f_bfree).saturating_mul(frsize);
    (total > 0).then_some((total, total.saturating_sub(free)))
}

/// Picks the thermal zone to report: the first whose type names the SoC, else the first zone.
fn choose_thermal_zone(dir: &Path) -> Option<PathBuf> {
    let mut zones: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("thermal_zone")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    zones.sort_by_key(|(n, _)| *n);
    let preferred = zones
        .iter()
        .find(|(_, p)| read_text(&p.join("type")).is_some_and(|t| SOC_ZONES.contains(&t.trim())));
    preferred.or(zones.first()).map(|(_, p)| p.join("temp"))
}
