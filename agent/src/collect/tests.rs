//! Parser tests on literal file contents, and collector tests on fake and real trees.

use std::fs;
use std::io;
use std::path::Path;

use pifleet_shared::proto::v1::Net;

use super::procfs::{CpuTimes, MemInfo, cpu_pct, parse_cpu_times, parse_loadavg, parse_meminfo};
use super::procfs::{parse_millidegrees, parse_model, parse_mounts, parse_net_dev};
use super::procfs::{parse_os_release, parse_throttled, parse_uptime, unescape_mount};
use super::{Collector, MAX_ENTRIES, MOUNTS_EVERY, truncate};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn put(root: &Path, rel: &str, contents: &[u8]) -> io::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(p, contents)
}

const STAT: &str = "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\nintr 1 2 3\n";
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
    let m = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n");
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
fn temperature_file_overrides_the_thermal_zone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    put(
        root,
        "sys/class/thermal/thermal_zone0/type",
        b"cpu-thermal\n",
    )?;
    put(root, "sys/class/thermal/thermal_zone0/temp", b"61000\n")?;
    put(root, "board/temp", b"48250\n")?;
    let mut c = Collector::new(root)?;
    assert_eq!(c.sample(1, 0, 0, 0).temp_c, Some(61.0));
    c.set_temperature_file(root.join("board/temp"));
    assert_eq!(c.sample(2, 0, 0, 0).temp_c, Some(48.25));
    // A file that turns unreadable or malformed reports no temperature, not an old one.
    put(root, "board/temp", b"warm\n")?;
    assert_eq!(c.sample(3, 0, 0, 0).temp_c, None);
    fs::remove_file(root.join("board/temp"))?;
    assert_eq!(c.sample(4, 0, 0, 0).temp_c, None);
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
