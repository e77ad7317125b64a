//! What benchmarks read of a process from `/proc`: its CPU time and memory.

use anyhow::{Context, Result};

/// A process's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// utime + stime, in clock ticks (100 per second on every Linux we target).
    pub cpu_ticks: u64,
    /// Nanoseconds on CPU summed over the live threads (schedstat): finer than ticks.
    pub cpu_ns: u64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second of `cpu_ticks` (`CLK_TCK`).
pub const TICKS_PER_SEC: f64 = 100.0;

fn schedstat_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Reads `/proc/PID/stat`, `status` and the threads' `schedstat`.
pub fn usage(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        Ok(status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| key.to_owned())?
            .parse()?)
    };
    Ok(Usage {
        cpu_ticks: utime + stime,
        cpu_ns: schedstat_ns(pid),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// How many file descriptors the process has open (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
