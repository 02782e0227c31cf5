//! The release `handler` as a child process: started the way the Functions host starts it
//! (a port in the environment, readiness by `GET /`), measured from /proc, stopped by SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::connection::Connection;
use crate::process::log_tail;

/// How to start one handler.
#[derive(Clone)]
pub(super) struct Spec {
    /// Names its log file (`target/bench/<name>.log`).
    pub(super) name: String,
    pub(super) binary: PathBuf,
    pub(super) functions_dir: PathBuf,
    pub(super) access_policy: PathBuf,
    /// More environment, such as `CHGATE_MAX_INFLIGHT_QUERIES`.
    pub(super) env: Vec<(&'static str, String)>,
    /// A program to run the handler under, with its arguments (valgrind).
    pub(super) wrapper: Vec<String>,
}

/// A running handler.
pub(super) struct Handler {
    child: Child,
    pid: i32,
    /// `http://127.0.0.1:<port>`
    pub(super) base: String,
    log: PathBuf,
}

/// Resident memory of a process, from /proc/<pid>/status.
#[derive(Clone, Copy)]
pub(super) struct Memory {
    /// VmRSS: resident now.
    pub(super) rss_kib: u64,
    /// VmHWM: the most it has been resident.
    pub(super) hwm_kib: u64,
}

impl Handler {
    /// Spawns the handler on a free port; it is not ready yet.
    pub(super) fn spawn(root: &Path, work_dir: &Path, spec: &Spec, connection: &Connection) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = work_dir.join(format!("{}.log", spec.name));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = match spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&spec.binary);
                command
            }
            None => Command::new(&spec.binary),
        };
        let child = command
            .current_dir(root)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("RUST_LOG", "warn")
            // access.toml's development issuer, which signs the bench's tokens.
            .env("CHGATE_ALLOW_DEV_ISSUERS", "1")
            .env("CHGATE_FUNCTIONS_DIR", &spec.functions_dir)
            .env("CHGATE_ACCESS_POLICY", &spec.access_policy)
            .envs(connection.env())
            .envs(spec.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        let pid = i32::try_from(child.id().context("the handler has no pid")?)?;
        Ok(Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// Starts the handler and waits until `GET /` answers 200.
    pub(super) async fn start(
        root: &Path,
        work_dir: &Path,
        spec: &Spec,
        connection: &Connection,
    ) -> anyhow::Result<Self> {
        let mut handler = Self::spawn(root, work_dir, spec, connection)?;
        let patience = if spec.wrapper.is_empty() { 20 } else { 180 };
        handler
            .wait_ready(Duration::from_millis(1), Duration::from_secs(patience))
            .await?;
        Ok(handler)
    }

    /// Polls `GET /` every `interval` until it answers 200; the time it took from the call.
    pub(super) async fn wait_ready(&mut self, interval: Duration, patience: Duration) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let url = format!("{}/", self.base);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(began.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the handler exited ({status}):\n{}", log_tail(&self.log));
            }
            if began.elapsed() > patience {
                bail!(
                    "the handler did not answer GET / within {} s:\n{}",
                    patience.as_secs(),
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(interval).await;
        }
    }

    pub(super) fn memory(&self) -> Option<Memory> {
        memory(self.pid)
    }

    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// The end of the handler's log, for error messages.
    pub(super) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// SIGTERM (the handler drains and exits, which also lets valgrind write its figures),
    /// then SIGKILL if it has not exited within `patience`.
    pub(super) async fn stop(mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("the handler did not exit within {} s of SIGTERM", patience.as_secs())
            }
        }
    }
}

/// VmRSS and VmHWM of `pid`.
pub(super) fn memory(pid: i32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
