//! Process figures from `/proc`: CPU time from `/proc/<pid>/stat` and peak resident set
//! (`VmHWM`), current resident set (`VmRSS`) and its private part (`RssAnon`) from
//! `/proc/<pid>/status`.

use crate::systems::Result;

/// Clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on every Linux we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds used so far by process `pid` (all its threads).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).ok_or("short /proc stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// Peak resident set size of process `pid` (`VmHWM`), KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size of process `pid` (`VmRSS`), KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The part of process `pid`'s resident set that is its own memory (`RssAnon`: heap,
/// stacks), not pages of files it maps (its executable and libraries), KiB.
pub(crate) fn private_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "RssAnon:")
}

/// A `kB` figure of `/proc/<pid>/status`, by its key (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(key))
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("malformed {key} line"))?
        .parse()?)
}
