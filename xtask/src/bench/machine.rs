//! What the figures were measured on, and the results file that keeps them:
//! `bench/results/<date>-<short hostname>.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::connection::Connection;

/// The machine, the toolchain and the source a run measured.
pub(super) struct Machine {
    /// `YYYY-MM-DD`, UTC.
    pub(super) date: String,
    /// The short host name, or `local`.
    pub(super) host: String,
    facts: Vec<(&'static str, String)>,
}

impl Machine {
    pub(super) fn describe(root: &Path, connection: &Connection) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let date = format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day());
        let when = format!("{date} {:02}:{:02} UTC", now.hour(), now.minute());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let facts = vec![
            ("Date", when),
            ("CPU", cpu_model(&cpuinfo)),
            ("Cores", cores(&cpuinfo)),
            ("Memory", memory(&meminfo)),
            ("OS", os()),
            (
                "rustc",
                command_line("rustc", &["--version"], root).unwrap_or_else(|| "unknown".to_owned()),
            ),
            ("Commit", commit(root)),
            ("ClickHouse", clickhouse(connection)),
            ("Load average (1, 5, 15 min) at the start", load_average().0),
        ];
        Self {
            date,
            host: short_hostname(),
            facts,
        }
    }

    /// The description as a Markdown list.
    pub(super) fn markdown(&self) -> String {
        self.facts
            .iter()
            .map(|(name, value)| format!("- {name}: {value}\n"))
            .collect()
    }

    /// Writes `# title`, the machine and `body` to `bench/results/<date>-<host><suffix>.md`.
    pub(super) fn write_results(&self, root: &Path, suffix: &str, title: &str, body: &str) -> anyhow::Result<PathBuf> {
        let dir = root.join("bench/results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}{suffix}.md", self.date, self.host));
        let text = format!("# {title}\n\n## Machine\n\n{}\n{body}", self.markdown());
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// /proc/loadavg's three averages as text, and the 1-minute one.
pub(super) fn load_average() -> (String, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = text.split_whitespace().take(3).collect();
    let one = averages.first().and_then(|a| a.parse().ok()).unwrap_or(0.0);
    (averages.join(", "), one)
}

/// A warning when other work keeps the CPUs busy: the share of CPU time not idle over one
/// second, sampled before the measurements start (so the bench's own build does not count).
pub(super) async fn busy_warning() -> Option<String> {
    let first = cpu_times()?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let second = cpu_times()?;
    let total = second.0.saturating_sub(first.0);
    let idle = second.1.saturating_sub(first.1);
    let busy = 1.0 - idle as f64 / total.max(1) as f64;
    (busy > 0.25).then(|| {
        format!(
            "Other work kept the CPUs {:.0}% busy just before the measurements (load average {}): \
             it shares the CPUs with the handler, the client and ClickHouse, so these figures \
             are noisier and slower than on a quiet machine.",
            busy * 100.0,
            load_average().0
        )
    })
}

/// All CPUs' time and idle time (idle + iowait), in clock ticks, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .find(|line| line.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().sum(), idle))
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(key.trim(), "model name" | "Hardware" | "Model" | "cpu model").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cores(cpuinfo: &str) -> String {
    let logical = cpuinfo.lines().filter(|line| line.starts_with("processor")).count();
    // Physical cores: distinct (physical id, core id) pairs, where the kernel gives them.
    let mut physical = std::collections::BTreeSet::new();
    let (mut package, mut core) = (None, None);
    for line in cpuinfo.lines().chain(std::iter::once("")) {
        match line.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("physical id", v)) => package = Some(v.to_owned()),
            Some(("core id", v)) => core = Some(v.to_owned()),
            None if line.trim().is_empty() => {
                if let (Some(p), Some(c)) = (package.take(), core.take()) {
                    physical.insert((p, c));
                }
            }
            _ => {}
        }
    }
    let available = std::thread::available_parallelism().map_or(0, usize::from);
    let mut text = format!("{logical} logical CPUs");
    if !physical.is_empty() {
        text.push_str(&format!(" ({} physical cores)", physical.len()));
    }
    if available != logical {
        text.push_str(&format!(", {available} available to this process"));
    }
    text
}

fn memory(meminfo: &str) -> String {
    meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)),
        )
}

fn os() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let name = release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map_or_else(|| std::env::consts::OS.to_owned(), |v| v.trim_matches('"').to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{name}, kernel {}, {}", kernel.trim(), std::env::consts::ARCH)
}

fn commit(root: &Path) -> String {
    let Some(hash) = command_line("git", &["rev-parse", "--short=12", "HEAD"], root) else {
        return "unknown".to_owned();
    };
    let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"], root)
        .is_some_and(|changes| !changes.is_empty());
    if dirty {
        format!("{hash} with uncommitted changes")
    } else {
        hash
    }
}

fn clickhouse(connection: &Connection) -> String {
    if connection.users_file.is_some() {
        format!(
            "{} (the local engine behind xtask/clickhouse/front.py: one query at a time)",
            connection.url
        )
    } else {
        connection.url.clone()
    }
}

/// The short host name (up to the first dot, letters, digits and dashes), or `local`.
fn short_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let short: String = name
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if short.is_empty() { "local".to_owned() } else { short }
}

/// The first line of a command's output, trimmed.
fn command_line(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let output = Command::new(program).args(args).current_dir(dir).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_model_and_cores() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 3.00GHz\nphysical id\t: 0\ncore id\t: 0\n\n\
                       processor\t: 1\nmodel name\t: Example CPU @ 3.00GHz\nphysical id\t: 0\ncore id\t: 0\n\n";
        assert_eq!(cpu_model(cpuinfo), "Example CPU @ 3.00GHz");
        assert!(cores(cpuinfo).starts_with("2 logical CPUs (1 physical cores)"));
        assert_eq!(memory("MemTotal:       25165824 kB\n"), "24.0 GiB");
    }
}
