//! Parsers for the text of `/proc`, `/sys` and `/etc` files: pure functions over what was
//! read, no I/O, so each is tested on literal file contents.

use pifleet_shared::proto::v1::Net;

use super::{MAX_ENTRIES, MAX_SHORT, truncate};

/// Filesystem types that are not real storage, or whose statvfs can hang (network mounts).
const SKIP_FS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "overlay",
    "squashfs",
    "autofs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "ramfs",
    "rpc_pipefs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "nfsd",
    "devfs",
    "none",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "fuse.sshfs",
    "fuse.snapfuse",
];

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CpuTimes {
    pub(super) busy: u64,
    pub(super) total: u64,
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MemInfo {
    pub(super) total: u64,
    pub(super) available: u64,
    pub(super) swap_total: u64,
    pub(super) swap_free: u64,
}

/// One mount from `/proc/self/mounts`, mount point unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    pub(super) device: String,
    pub(super) mount: String,
    pub(super) fs: String,
}

/// Parses the aggregate `cpu` line of `/proc/stat`. Busy time is everything but idle and
/// iowait; guest time is already included in user time, so it is not added again.
pub(super) fn parse_cpu_times(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut fields = line.split_ascii_whitespace().skip(1).map(str::parse::<u64>);
    let mut next = || fields.next().and_then(Result::ok).unwrap_or(0);
    let (user, nice, system, idle) = (next(), next(), next(), next());
    let (iowait, irq, softirq, steal) = (next(), next(), next(), next());
    let busy = user + nice + system + irq + softirq + steal;
    let total = busy + idle + iowait;
    (total > 0).then_some(CpuTimes { busy, total })
}

/// CPU busy share between two readings, clamped to 0–100 (counters can step back on hotplug).
pub(super) fn cpu_pct(prev: CpuTimes, now: CpuTimes) -> f32 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let busy = now.busy.saturating_sub(prev.busy).min(total);
    (busy as f64 * 100.0 / total as f64) as f32
}

/// Parses `/proc/loadavg`: the first three fields.
pub(super) fn parse_loadavg(text: &str) -> Option<(f32, f32, f32)> {
    let mut it = text.split_ascii_whitespace().map(str::parse::<f32>);
    let mut next = || it.next().and_then(Result::ok);
    Some((next()?, next()?, next()?))
}

/// Parses `/proc/meminfo` (kB values). Without `MemAvailable` (kernels before 3.14) available
/// memory is estimated as free + buffers + cached.
pub(super) fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    let (mut free, mut buffers, mut cached, mut avail) = (0, 0, 0, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let bytes = kb.saturating_mul(1024);
        match key {
            "MemTotal" => m.total = bytes,
            "MemFree" => free = bytes,
            "MemAvailable" => avail = Some(bytes),
            "Buffers" => buffers = bytes,
            "Cached" => cached = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    m.available = avail.unwrap_or(free + buffers + cached).min(m.total);
    m
}

/// Parses `/proc/uptime`: whole seconds since boot.
pub(super) fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// Parses `/proc/net/dev` into `out`, skipping loopback, at most `MAX_ENTRIES` interfaces.
pub(super) fn parse_net_dev(text: &str, out: &mut Vec<Net>) {
    for line in text.lines().skip(2) {
        if out.len() >= MAX_ENTRIES {
            break;
        }
        let Some((iface, counters)) = line.split_once(':') else {
            continue;
        };
        let iface = iface.trim();
        if iface.is_empty() || iface == "lo" {
            continue;
        }
        let mut fields = counters.split_ascii_whitespace();
        let rx = fields.next().and_then(|v| v.parse().ok());
        // Receive has 8 columns; transmit bytes is the 9th.
        let tx = fields.nth(7).and_then(|v| v.parse().ok());
        if let (Some(rx_bytes), Some(tx_bytes)) = (rx, tx) {
            out.push(Net {
                iface: truncate(iface, MAX_SHORT),
                rx_bytes,
                tx_bytes,
            });
        }
    }
}

/// Whether a filesystem type is real storage worth reporting.
fn is_real_fs(fs: &str) -> bool {
    !fs.starts_with("cgroup") && !SKIP_FS.contains(&fs)
}

/// Undoes the octal escapes (`\040` for space, …) the kernel uses in mount paths.
pub(super) fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mounts`, keeping real filesystems, the first mount of each device.
pub(super) fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(device), Some(mount), Some(fs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !is_real_fs(fs) || out.iter().any(|m| m.device == device) {
            continue;
        }
        out.push(Mount {
            device: device.to_owned(),
            mount: unescape_mount(mount),
            fs: fs.to_owned(),
        });
    }
    out
}

/// Parses a thermal zone `temp` file: millidegrees Celsius.
pub(super) fn parse_millidegrees(text: &str) -> Option<f32> {
    let milli: i64 = text.trim().parse().ok()?;
    Some((milli as f64 / 1000.0) as f32)
}

/// Parses the firmware's `get_throttled` bits, hex with or without a `0x` prefix.
pub(super) fn parse_throttled(text: &str) -> Option<u32> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(hex, 16).ok()
}

/// Extracts `PRETTY_NAME` from os-release, removing quotes and shell escapes.
pub(super) fn parse_os_release(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    let mut out = String::with_capacity(unquoted.len());
    let mut chars = unquoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

/// Parses the device-tree model: NUL-terminated text.
pub(super) fn parse_model(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let model = text.trim_end_matches('\0').trim();
    (!model.is_empty()).then(|| model.to_owned())
}
