//! Operating-system helpers: the open-file limit, CPU pinning, `/proc` readers (CPU time,
//! resident memory) and a description of the machine for the results.

use std::time::Instant;

use serde::Serialize;

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Pins the calling thread (and every thread it creates later) to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime of a process, in clock ticks (every thread included).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A CPU-time reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub ticks: u64,
    pub at: Instant,
}

impl CpuMark {
    pub fn take(pid: u32) -> Option<CpuMark> {
        Some(CpuMark {
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU use since this mark in percent of one core.
    pub fn pct_until(&self, later: &CpuMark) -> f64 {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        let cpu = later.ticks.saturating_sub(self.ticks) as f64 / clk_tck() as f64;
        100.0 * cpu / secs
    }

    /// CPU seconds used since this mark.
    pub fn cpu_secs_until(&self, later: &CpuMark) -> f64 {
        later.ticks.saturating_sub(self.ticks) as f64 / clk_tck() as f64
    }
}

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus_online: u64,
    pub cpu_model: String,
    pub mem_total: String,
    pub kernel: String,
    pub nofile_limit: u64,
    pub loadavg_at_start: String,
}

pub fn machine(nofile: u64) -> Machine {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as u64;
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Machine {
        cpus_online: cpus,
        cpu_model,
        mem_total,
        kernel,
        nofile_limit: nofile,
        loadavg_at_start,
    }
}

/// Busy clock ticks per CPU line of `/proc/stat` (`cpu` total first, then `cpu0`, ...).
pub fn busy_ticks() -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .take_while(|l| l.starts_with("cpu"))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
            f.iter().take(8).sum::<u64>()
                - f.get(3).copied().unwrap_or(0)
                - f.get(4).copied().unwrap_or(0)
        })
        .collect()
}

/// Clock ticks the hypervisor took from this machine's CPUs (`steal` of `/proc/stat`'s
/// `cpu` line): time the VM wanted to run and could not.
pub fn steal_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Kernel memory of all TCP sockets on the machine in KiB (`/proc/net/sockstat`, pages).
pub fn tcp_mem_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "mem" {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            return it.next()?.parse::<u64>().ok().map(|p| p * page / 1024);
        }
    }
    None
}

/// Listen-queue counters of the kernel (`/proc/net/netstat`, TcpExt): a hub whose accept
/// backlog overflows makes clients wait for a SYN retransmit (1 s, then 3 s...).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ListenStats {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syncookies_sent: u64,
}

pub fn listen_stats() -> ListenStats {
    let Ok(s) = std::fs::read_to_string("/proc/net/netstat") else {
        return ListenStats::default();
    };
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(vals)) = (lines.next(), lines.next()) else {
        return ListenStats::default();
    };
    let get = |name: &str| {
        keys.split_whitespace()
            .zip(vals.split_whitespace())
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    ListenStats {
        listen_overflows: get("ListenOverflows"),
        listen_drops: get("ListenDrops"),
        syncookies_sent: get("SyncookiesSent"),
    }
}

impl ListenStats {
    pub fn since(&self, before: &ListenStats) -> ListenStats {
        ListenStats {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(before.listen_drops),
            syncookies_sent: self.syncookies_sent.saturating_sub(before.syncookies_sent),
        }
    }
}

/// Kernel counters that explain latency outliers on loopback: TCP segments retransmitted
/// (RTO ≥ 200 ms) and packets dropped because a CPU's backlog queue was full
/// (`net.core.netdev_max_backlog`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NetDrops {
    pub tcp_retrans_segs: u64,
    pub backlog_drops: u64,
}

pub fn net_drops() -> NetDrops {
    let retrans = std::fs::read_to_string("/proc/net/snmp")
        .ok()
        .and_then(|s| {
            let mut tcp = s.lines().filter(|l| l.starts_with("Tcp:"));
            let (keys, vals) = (tcp.next()?, tcp.next()?);
            keys.split_whitespace()
                .zip(vals.split_whitespace())
                .find(|(k, _)| *k == "RetransSegs")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0);
    let drops = std::fs::read_to_string("/proc/net/softnet_stat")
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|v| u64::from_str_radix(v, 16).ok())
                .sum()
        })
        .unwrap_or(0);
    NetDrops {
        tcp_retrans_segs: retrans,
        backlog_drops: drops,
    }
}
