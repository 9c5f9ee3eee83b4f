//! A process's resident memory, CPU time and children, from Linux's `/proc`.

use std::time::Duration;

/// `VmRSS` of `pid`, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The summed `VmRSS` of `pids`, or `None` if any cannot be read.
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| rss_of(p)).sum()
}

/// CPU time (user and system) of every live thread of `pid`, in
/// nanoseconds from `/proc/PID/task/*/schedstat`; where that is missing, the
/// whole process's time from `/proc/PID/stat` in 10 ms ticks.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    schedstat_of(pid).or_else(|| stat_ticks_of(pid))
}

/// The summed [`cpu_of`] of `pids`, or `None` if any cannot be read.
pub fn cpu_sum(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|&p| cpu_of(p)).sum()
}

fn schedstat_of(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended since the listing: its time is gone either way.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        any = true;
    }
    any.then(|| Duration::from_nanos(total))
}

fn stat_ticks_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The child processes of `pid` (for nginx: its workers).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}
