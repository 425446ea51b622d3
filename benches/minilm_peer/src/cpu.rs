//! How much CPU a timed loop used and on how many threads: the check that a
//! "1 thread" configuration really ran on one core and "2 threads" on two.

use std::collections::HashMap;
use std::time::Duration;

/// CPU time so far: the whole process (nanoseconds) and each live thread
/// (clock ticks, from /proc/self/task/*/stat).
pub struct CpuSnapshot {
    process_ns: u128,
    thread_ticks: HashMap<u32, u64>,
    machine_busy_ticks: u64,
}

/// CPU used between a snapshot and now.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct CpuUse {
    /// Process CPU time divided by wall time: about 1.0 single-threaded,
    /// up to the thread count when every thread computes all the time.
    pub cpu_per_wall: f64,
    /// Threads that were on a CPU for at least a tenth of the wall time.
    pub busy_threads: usize,
    /// Threads alive at the end (including idle pool threads).
    pub live_threads: usize,
    /// CPUs' worth of time other processes took meanwhile (machine busy
    /// time minus ours, over wall time): 0 on a quiet machine; 1 means a
    /// whole core was taken from a two-thread run.
    pub others_cores: f64,
}

pub fn snapshot() -> CpuSnapshot {
    CpuSnapshot {
        process_ns: process_cpu_ns(),
        thread_ticks: thread_ticks(),
        machine_busy_ticks: machine_busy_ticks().unwrap_or(0),
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Non-idle time of all CPUs so far, from the first line of /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = fields[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

/// CPUs' worth of time the whole machine is busy over `window`.
pub fn machine_load(window: Duration) -> f64 {
    let before = machine_busy_ticks().unwrap_or(0);
    std::thread::sleep(window);
    let after = machine_busy_ticks().unwrap_or(0);
    after.saturating_sub(before) as f64 / ticks_per_second() / window.as_secs_f64()
}

pub fn since(before: &CpuSnapshot, wall: Duration) -> CpuUse {
    let process = process_cpu_ns().saturating_sub(before.process_ns);
    let after = thread_ticks();
    let ticks_per_second = ticks_per_second();
    let wall_ticks = wall.as_secs_f64() * ticks_per_second;
    let busy_threads = after
        .iter()
        .filter(|(tid, &ticks)| {
            let earlier = before.thread_ticks.get(tid).copied().unwrap_or(0);
            (ticks.saturating_sub(earlier) as f64) >= 0.1 * wall_ticks
        })
        .count();
    let machine_busy = machine_busy_ticks()
        .unwrap_or(0)
        .saturating_sub(before.machine_busy_ticks) as f64
        / ticks_per_second;
    let ours = process as f64 / 1e9;
    CpuUse {
        cpu_per_wall: process as f64 / wall.as_nanos().max(1) as f64,
        busy_threads,
        live_threads: after.len(),
        others_cores: ((machine_busy - ours) / wall.as_secs_f64()).max(0.0),
    }
}

/// CPU time of the whole process so far (all threads), in nanoseconds.
pub fn process_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if status != 0 {
        return 0;
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// utime + stime of every thread of this process, by thread id.
fn thread_ticks() -> HashMap<u32, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name (field 2) is parenthesised and may hold spaces;
            // fields 14 and 15 (utime, stime) are the 12th and 13th after it.
            let after_name = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((tid, utime + stime))
        })
        .collect()
}
