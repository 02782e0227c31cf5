//! Small helpers for the background processes the tasks start (the ClickHouse front, the
//! OpenID provider): liveness and the end of their logs.

use std::fs;
use std::path::Path;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Whether `pid` runs. A zombie (exited, not yet reaped) still accepts signal 0; its stat line
/// says 'Z'.
pub fn is_alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
}

/// The last 20 lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let log = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
