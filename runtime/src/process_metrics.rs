//! Process metrics (CPU time, resident and virtual memory, open and maximum
//! file descriptors, start time) and the build-info metric, registered on
//! every component's registry by `Metrics::new`. The process figures are
//! read from `/proc/self` at scrape time (Linux); elsewhere the collector
//! yields nothing rather than wrong numbers. Written here rather than with
//! the `prometheus` crate's `process` feature to avoid pulling `procfs`
//! into every component for six numbers.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

/// Clock ticks per second of `/proc/<pid>/stat`: `USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture Linux ships.
const USER_HZ: f64 = 100.0;

/// Collects the process metrics of the current process.
#[derive(Clone, Debug)]
pub struct ProcessCollector {
    descs: Vec<Desc>,
}

const METRICS: &[(&str, &str)] = &[
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
    ),
    ("process_open_fds", "Number of open file descriptors."),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
    ),
];

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCollector {
    pub fn new() -> Self {
        let descs = METRICS
            .iter()
            .map(|(name, help)| {
                Desc::new((*name).into(), (*help).into(), vec![], Default::default())
                    .expect("valid process metric")
            })
            .collect();
        Self { descs }
    }
}

/// The figures read from `/proc`; `None` where a file could not be read.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// Parses `/proc/<pid>/stat`: (utime + stime in ticks, start time in ticks
/// after boot, virtual size in bytes). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<(f64, f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let utime: f64 = f.get(14 - 3)?.parse().ok()?;
    let stime: f64 = f.get(15 - 3)?.parse().ok()?;
    let start: f64 = f.get(22 - 3)?.parse().ok()?;
    let vsize: f64 = f.get(23 - 3)?.parse().ok()?;
    Some((utime + stime, start, vsize))
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits`.
pub fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, seconds since the epoch) of `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads the current process's figures.
pub fn read_self() -> ProcessStats {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut s = ProcessStats::default();
    if let Some((cpu_ticks, start_ticks, vsize)) =
        read("/proc/self/stat").as_deref().and_then(parse_stat)
    {
        s.cpu_seconds = Some(cpu_ticks / USER_HZ);
        s.virtual_bytes = Some(vsize);
        s.start_time_seconds = read("/proc/stat")
            .as_deref()
            .and_then(parse_btime)
            .map(|b| b + start_ticks / USER_HZ);
    }
    s.resident_bytes = read("/proc/self/status").as_deref().and_then(parse_rss);
    s.max_fds = read("/proc/self/limits").as_deref().and_then(parse_max_fds);
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    s
}

fn family(name: &str, help: &str, counter: bool, v: f64) -> MetricFamily {
    let mut m = Metric::default();
    if counter {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    }
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    f.mut_metric().push(m);
    f
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = read_self();
        let values = [
            s.cpu_seconds,
            s.resident_bytes,
            s.virtual_bytes,
            s.open_fds,
            s.max_fds,
            s.start_time_seconds,
        ];
        METRICS
            .iter()
            .zip(values)
            .filter_map(|((name, help), v)| Some(family(name, help, name.ends_with("_total"), v?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // Field 2 holds a space and a parenthesis, as a thread name may.
        let stat = "4242 (edge (client) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615";
        let (cpu, start, vsize) = parse_stat(stat).expect("parses");
        assert_eq!(cpu, 300.0);
        assert_eq!(start, 123456.0);
        assert_eq!(vsize, 104857600.0);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_limits_and_btime_are_parsed() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t    2048 kB\nThreads: 3\n"),
            Some(2048.0 * 1024.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1764680000\nprocesses 9\n"),
            Some(1764680000.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_current_process_reports_plausible_figures() {
        let s = read_self();
        assert!(s.resident_bytes.unwrap() > 1024.0 * 1024.0, "{s:?}");
        assert!(s.open_fds.unwrap() >= 3.0, "{s:?}");
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap(), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{s:?}"
        );
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }
}
