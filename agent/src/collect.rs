//! Telemetry collection straight from `/proc` and `/sys`.
//!
//! Everything is read below a configurable root so tests can build a fake tree, and nothing
//! spawns a process (no `vcgencmd`): one sample costs a handful of small reads and one
//! statvfs(3) per real mount. A missing or unreadable file yields `None` or 0, never an error,
//! because devices differ (no thermal zone on a VM, no firmware node off a Pi).

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pifleet_shared::proto::v1::{Disk, Hello, Net, Sample};

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

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MemInfo {
    total: u64,
    available: u64,
    swap_total: u64,
    swap_free: u64,
}

/// One mount from `/proc/self/mounts`, mount point unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    device: String,
    mount: String,
    fs: String,
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

/// Parses the aggregate `cpu` line of `/proc/stat`. Busy time is everything but idle and
/// iowait; guest time is already included in user time, so it is not added again.
fn parse_cpu_times(text: &str) -> Option<CpuTimes> {
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
fn cpu_pct(prev: CpuTimes, now: CpuTimes) -> f32 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let busy = now.busy.saturating_sub(prev.busy).min(total);
    (busy as f64 * 100.0 / total as f64) as f32
}

/// Parses `/proc/loadavg`: the first three fields.
fn parse_loadavg(text: &str) -> Option<(f32, f32, f32)> {
    let mut it = text.split_ascii_whitespace().map(str::parse::<f32>);
    let mut next = || it.next().and_then(Result::ok);
    Some((next()?, next()?, next()?))
}

/// Parses `/proc/meminfo` (kB values). Without `MemAvailable` (kernels before 3.14) available
/// memory is estimated as free + buffers + cached.
fn parse_meminfo(text: &str) -> MemInfo {
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
fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// Parses `/proc/net/dev` into `out`, skipping loopback, at most `MAX_ENTRIES` interfaces.
fn parse_net_dev(text: &str, out: &mut Vec<Net>) {
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
fn unescape_mount(s: &str) -> String {
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
fn parse_mounts(text: &str) -> Vec<Mount> {
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

/// Parses a thermal zone `temp` file: millidegrees Celsius.
fn parse_millidegrees(text: &str) -> Option<f32> {
    let milli: i64 = text.trim().parse().ok()?;
    Some((milli as f64 / 1000.0) as f32)
}

/// Parses the firmware's `get_throttled` bits, hex with or without a `0x` prefix.
fn parse_throttled(text: &str) -> Option<u32> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(hex, 16).ok()
}

/// Extracts `PRETTY_NAME` from os-release, removing quotes and shell escapes.
fn parse_os_release(text: &str) -> Option<String> {
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
fn parse_model(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let model = text.trim_end_matches('\0').trim();
    (!model.is_empty()).then(|| model.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn put(root: &Path, rel: &str, contents: &[u8]) -> io::Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(p, contents)
    }

    const STAT: &str =
        "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\nintr 1 2 3\n";
    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 115118266    5814    0    0    0     0          0         0   479567    4758    0    0    0     0       0          0
wlan0:12 1 0 0 0 0 0 0 34 1 0 0 0 0 0 0
";
    const MEMINFO: &str = "MemTotal:        3884096 kB
MemFree:          123456 kB
MemAvailable:    2884096 kB
Buffers:           10000 kB
Cached:           500000 kB
SwapTotal:        102396 kB
SwapFree:           2396 kB
";

    #[test]
    fn parses_cpu_and_computes_share() {
        let t = parse_cpu_times(STAT);
        assert_eq!(
            t,
            Some(CpuTimes {
                busy: 160,
                total: 1000
            })
        );
        let now = CpuTimes {
            busy: 260,
            total: 1200,
        };
        assert!(
            (cpu_pct(
                CpuTimes {
                    busy: 160,
                    total: 1000
                },
                now
            ) - 50.0)
                .abs()
                < 1e-4
        );
        assert_eq!(cpu_pct(now, now), 0.0);
        // Counters that step back never give a value outside 0..=100.
        assert_eq!(
            cpu_pct(
                now,
                CpuTimes {
                    busy: 10,
                    total: 20
                }
            ),
            0.0
        );
        assert_eq!(
            cpu_pct(CpuTimes::default(), CpuTimes { busy: 5, total: 4 }),
            100.0
        );
        assert_eq!(parse_cpu_times("garbage"), None);
        assert_eq!(parse_cpu_times("cpu  0 0 0 0\n"), None);
    }

    #[test]
    fn parses_loadavg_uptime_meminfo() {
        assert_eq!(
            parse_loadavg("0.09 0.43 0.24 1/81 9504\n"),
            Some((0.09, 0.43, 0.24))
        );
        assert_eq!(parse_loadavg("0.09 x"), None);
        assert_eq!(parse_uptime("592.83 900.56\n"), Some(592));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);
        let m = parse_meminfo(MEMINFO);
        assert_eq!(
            m,
            MemInfo {
                total: 3_884_096 * 1024,
                available: 2_884_096 * 1024,
                swap_total: 102_396 * 1024,
                swap_free: 2396 * 1024,
            }
        );
        // Old kernels: no MemAvailable.
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n");
        assert_eq!(m.available, 310 * 1024);
    }

    #[test]
    fn parses_net_dev_skipping_loopback() {
        let mut nets = Vec::new();
        parse_net_dev(NET_DEV, &mut nets);
        assert_eq!(
            nets,
            vec![
                Net {
                    iface: "eth0".into(),
                    rx_bytes: 115_118_266,
                    tx_bytes: 479_567
                },
                Net {
                    iface: "wlan0".into(),
                    rx_bytes: 12,
                    tx_bytes: 34
                },
            ]
        );
        let mut many = String::from("h1\nh2\n");
        for i in 0..50 {
            many.push_str(&format!("veth{i}: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n"));
        }
        nets.clear();
        parse_net_dev(&many, &mut nets);
        assert_eq!(nets.len(), MAX_ENTRIES);
    }

    #[test]
    fn parses_mounts_keeping_real_filesystems_once() {
        let text = "proc /proc proc rw 0 0
sysfs /sys sysfs rw 0 0
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
devtmpfs /dev devtmpfs rw 0 0
tmpfs /run tmpfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw 0 0
/dev/mmcblk0p2 /var/lib/bind ext4 rw 0 0
overlay /var/lib/docker/x overlay rw 0 0
/dev/loop0 /snap/core squashfs ro 0 0
/dev/sda1 /mnt/usb\\040stick exfat rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
short line
";
        let m = parse_mounts(text);
        let got: Vec<(&str, &str)> = m
            .iter()
            .map(|m| (m.mount.as_str(), m.fs.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/", "ext4"),
                ("/boot/firmware", "vfat"),
                ("/mnt/usb stick", "exfat")
            ]
        );
        assert_eq!(unescape_mount("a\\011b\\134c\\9"), "a\tb\\c\\9");
        assert_eq!(unescape_mount("end\\04"), "end\\04");
    }

    #[test]
    fn parses_throttled_hex() {
        assert_eq!(parse_throttled("0x50005\n"), Some(0x50005));
        assert_eq!(parse_throttled("50005\n"), Some(0x50005));
        assert_eq!(parse_throttled("0\n"), Some(0));
        assert_eq!(parse_throttled("0xZZ"), None);
        assert_eq!(parse_throttled(""), None);
        assert_eq!(parse_throttled("0x1234567890"), None);
    }

    #[test]
    fn parses_os_release_model_and_temp() {
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME='A \\\"b\\\"'").as_deref(),
            Some("A \"b\"")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=Plain").as_deref(),
            Some("Plain")
        );
        assert_eq!(parse_os_release("ID=x\n"), None);
        assert_eq!(
            parse_model(b"Raspberry Pi 4 Model B Rev 1.4\0").as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(parse_model(b"\0\0"), None);
        assert_eq!(parse_millidegrees("48312\n"), Some(48.312));
        assert_eq!(parse_millidegrees("-5000"), Some(-5.0));
        assert_eq!(parse_millidegrees("hot"), None);
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aéb", 2), "a");
    }

    #[test]
    fn prefers_soc_thermal_zone() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        put(root, "sys/class/thermal/thermal_zone0/type", b"acpitz\n")?;
        put(root, "sys/class/thermal/thermal_zone0/temp", b"30000\n")?;
        put(
            root,
            "sys/class/thermal/thermal_zone10/type",
            b"x86_pkg_temp\n",
        )?;
        put(root, "sys/class/thermal/thermal_zone10/temp", b"61500\n")?;
        put(root, "sys/class/thermal/thermal_zone2/type", b"iwlwifi\n")?;
        put(root, "sys/class/thermal/thermal_zone2/temp", b"40000\n")?;
        put(
            root,
            "sys/class/thermal/cooling_device0/type",
            b"cpu-thermal\n",
        )?;
        let mut c = Collector::new(root)?;
        assert_eq!(c.sample(1, 0, 0, 0).temp_c, Some(61.5));

        // No SoC zone: the lowest-numbered zone.
        fs::remove_dir_all(root.join("sys/class/thermal/thermal_zone10"))?;
        let mut c = Collector::new(root)?;
        assert_eq!(c.sample(1, 0, 0, 0).temp_c, Some(30.0));
        Ok(())
    }

    #[test]
    fn samples_a_fake_pi() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        put(root, "proc/stat", STAT.as_bytes())?;
        put(root, "proc/meminfo", MEMINFO.as_bytes())?;
        put(root, "proc/loadavg", b"1.50 0.75 0.25 2/100 1234\n")?;
        put(root, "proc/uptime", b"3600.5 7000.1\n")?;
        put(root, "proc/net/dev", NET_DEV.as_bytes())?;
        fs::create_dir_all(root.join("boot/firmware"))?;
        put(
            root,
            "proc/self/mounts",
            b"/dev/mmcblk0p2 / ext4 rw 0 0
proc /proc proc rw 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw 0 0
/dev/sdz9 /does/not/exist ext4 rw 0 0
",
        )?;
        put(
            root,
            "sys/class/thermal/thermal_zone0/type",
            b"cpu-thermal\n",
        )?;
        put(root, "sys/class/thermal/thermal_zone0/temp", b"48312\n")?;
        put(
            root,
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            b"0x50005\n",
        )?;
        put(
            root,
            "proc/device-tree/model",
            b"Raspberry Pi 4 Model B Rev 1.4\0",
        )?;
        put(
            root,
            "etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        )?;
        put(root, "proc/sys/kernel/hostname", b"pi-kiosk-7\n")?;
        put(root, "proc/sys/kernel/osrelease", b"6.6.31+rpt-rpi-v8\n")?;

        let mut c = Collector::new(root)?;
        let s = c.sample(7, 1_700_000_000_000, 3, 42);
        assert_eq!(
            (s.seq, s.ts_ms, s.spool_dropped, s.spool_backlog),
            (7, 1_700_000_000_000, 3, 42)
        );
        assert!((s.cpu_pct - 16.0).abs() < 1e-4, "since boot: {}", s.cpu_pct);
        assert_eq!((s.load1, s.load5, s.load15), (1.5, 0.75, 0.25));
        assert_eq!(s.mem_total_bytes, 3_884_096 * 1024);
        assert_eq!(s.mem_used_bytes, 1_000_000 * 1024);
        assert_eq!(s.swap_total_bytes, 102_396 * 1024);
        assert_eq!(s.swap_used_bytes, 100_000 * 1024);
        assert_eq!(s.uptime_s, 3600);
        assert_eq!(s.nets.len(), 2);
        let mounts: Vec<&str> = s.disks.iter().map(|d| d.mount.as_str()).collect();
        assert_eq!(mounts, vec!["/", "/boot/firmware"]);
        assert!(
            s.disks
                .iter()
                .all(|d| d.total_bytes > 0 && d.used_bytes <= d.total_bytes)
        );
        assert_eq!(s.temp_c, Some(48.312));
        assert_eq!(s.throttled, Some(0x50005));

        // The next sample reports the share since the previous one.
        put(root, "proc/stat", b"cpu  200 10 50 900 40 0 0 0 0 0\n")?;
        assert!((c.sample(8, 0, 0, 0).cpu_pct - 50.0).abs() < 1e-4);

        // A new mount shows up once the cached mount table is refreshed.
        fs::create_dir_all(root.join("media/usb"))?;
        let mounts = b"/dev/mmcblk0p2 / ext4 rw 0 0\n/dev/sda1 /media/usb exfat rw 0 0\n";
        put(root, "proc/self/mounts", mounts)?;
        let seen = (0..MOUNTS_EVERY).any(|_| {
            c.sample(9, 0, 0, 0)
                .disks
                .iter()
                .any(|d| d.mount == "/media/usb")
        });
        assert!(seen);
        put(
            root,
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            b"nonsense\n",
        )?;
        assert_eq!(c.sample(9, 0, 0, 0).throttled, None);

        let h = c.hello("0.1.0", 10);
        assert_eq!(h.hostname, "pi-kiosk-7");
        assert_eq!(h.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(h.kernel, "6.6.31+rpt-rpi-v8");
        assert_eq!(h.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(h.arch, std::env::consts::ARCH);
        assert_eq!((h.uptime_s, h.interval_s), (3600, 10));
        Ok(())
    }

    #[test]
    fn missing_files_give_empty_values() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut c = Collector::new(dir.path())?;
        let s = c.sample(1, 0, 0, 0);
        assert_eq!((s.cpu_pct, s.mem_total_bytes, s.uptime_s), (0.0, 0, 0));
        assert!(s.disks.is_empty() && s.nets.is_empty());
        assert_eq!((s.temp_c, s.throttled), (None, None));
        let h = c.hello("0.1.0", 10);
        assert_eq!(
            (h.hostname.as_str(), h.os.as_str(), h.kernel.as_str()),
            ("unknown", "Linux", "unknown")
        );
        assert_eq!(h.model, None);
        assert!(Collector::new(dir.path().join("nope")).is_err());
        Ok(())
    }

    #[test]
    fn long_strings_keep_messages_small() -> TestResult {
        use pifleet_shared::codec::encode;
        use pifleet_shared::topic::Kind;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let long = "x".repeat(10_000);
        put(root, "proc/sys/kernel/hostname", long.as_bytes())?;
        put(root, "proc/sys/kernel/osrelease", long.as_bytes())?;
        put(
            root,
            "etc/os-release",
            format!("PRETTY_NAME=\"{long}\"").as_bytes(),
        )?;
        put(root, "proc/device-tree/model", long.as_bytes())?;
        let mut mounts = String::new();
        let mut net = String::from("h\nh\n");
        for i in 0..100 {
            let y = "y".repeat(200);
            let m = format!("m{i}/{y}/{y}");
            fs::create_dir_all(root.join(&m))?;
            mounts.push_str(&format!("/dev/d{i} /{m} ext4{} rw 0 0\n", "z".repeat(100)));
            net.push_str(&format!(
                "{}{i}: 1 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0\n",
                "n".repeat(100)
            ));
        }
        put(root, "proc/self/mounts", mounts.as_bytes())?;
        put(root, "proc/net/dev", net.as_bytes())?;
        let mut c = Collector::new(root)?;
        let h = c.hello(&long, 10);
        assert!(encode(Kind::Hello, &h)?.len() < 1024);
        let s = c.sample(u64::MAX, i64::MAX, u64::MAX, u64::MAX);
        assert_eq!((s.disks.len(), s.nets.len()), (MAX_ENTRIES, MAX_ENTRIES));
        assert!(encode(Kind::Telemetry, &s)?.len() < 16 * 1024);
        Ok(())
    }

    #[test]
    fn samples_this_machine() -> TestResult {
        let mut c = Collector::new("/")?;
        for seq in 1..=3 {
            let s = c.sample(seq, 0, 0, 0);
            assert!(s.mem_total_bytes > 0);
            assert!(s.mem_used_bytes <= s.mem_total_bytes);
            assert!((0.0..=100.0).contains(&s.cpu_pct), "cpu {}", s.cpu_pct);
            assert!(s.nets.iter().all(|n| n.iface != "lo"));
        }
        let h = c.hello("0.1.0", 10);
        assert!(!h.hostname.is_empty() && !h.kernel.is_empty());
        Ok(())
    }
}
