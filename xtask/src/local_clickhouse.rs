//! The local ClickHouse: the real engine (chdb-core) behind `xtask/clickhouse/front.py`,
//! served on loopback over ClickHouse's HTTP interface.
//!
//! Everything it needs lives under `.local/` (git-ignored): the Python venv, the engine's data,
//! the users file, the pid file and the log. Starting is idempotent: a running, answering
//! server is reused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use serde_json::json;

use crate::connection::Connection;
use crate::process::{is_alive, log_tail};

/// The port used unless `CHGATE_CLICKHOUSE_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 18123;

/// The user the service and the tests connect as (the front also has `default`, no password,
/// like a fresh server, so that plain curl works).
pub const APP_USER: &str = "chgate";

/// Where the local ClickHouse keeps its files.
#[derive(Debug, Clone)]
pub struct LocalClickHouse {
    root: PathBuf,
}

impl LocalClickHouse {
    pub fn new(repo_root: &Path) -> Self {
        Self {
            root: repo_root.to_path_buf(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join(".local/clickhouse")
    }
    fn venv(&self) -> PathBuf {
        self.root.join(".local/venv")
    }
    fn pid_file(&self) -> PathBuf {
        self.state_dir().join("front.pid")
    }
    fn log_file(&self) -> PathBuf {
        self.state_dir().join("front.log")
    }
    /// The users file the front re-reads on every change (rotate a password by editing it).
    pub fn users_file(&self) -> PathBuf {
        self.state_dir().join("users.json")
    }
    fn front_script(&self) -> PathBuf {
        self.root.join("xtask/clickhouse/front.py")
    }
    fn requirements(&self) -> PathBuf {
        self.root.join("xtask/clickhouse/requirements.txt")
    }

    pub fn port() -> anyhow::Result<u16> {
        match std::env::var("CHGATE_CLICKHOUSE_PORT") {
            Ok(port) => port.parse().context("CHGATE_CLICKHOUSE_PORT is not a port number"),
            Err(_) => Ok(DEFAULT_PORT),
        }
    }

    pub fn url() -> anyhow::Result<String> {
        Ok(format!("http://127.0.0.1:{}", Self::port()?))
    }

    /// How to connect as the application user (the password is read from the users file).
    pub fn connection(&self) -> anyhow::Result<Connection> {
        let users: serde_json::Value = serde_json::from_slice(
            &fs::read(self.users_file()).context("the local ClickHouse has no users file yet")?,
        )?;
        let password = users["users"][APP_USER]["password"]
            .as_str()
            .context("users file has no password for the application user")?;
        Ok(Connection {
            url: Self::url()?,
            user: APP_USER.to_owned(),
            password: password.to_owned(),
            database: "default".to_owned(),
            users_file: Some(self.users_file()),
        })
    }

    /// Starts the server unless it already answers. Returns whether this call started it.
    pub async fn start(&self) -> anyhow::Result<bool> {
        if self.running_pid().is_some() && self.answers().await {
            return Ok(false);
        }
        self.stop().await?;
        if self.answers().await {
            bail!(
                "port {} is in use by a server this checkout did not start (a local ClickHouse of \
                 another checkout?): stop it, or choose another port with CHGATE_CLICKHOUSE_PORT",
                Self::port()?
            );
        }
        self.ensure_venv()?;
        fs::create_dir_all(self.state_dir().join("data"))?;
        self.ensure_users_file()?;
        let log = fs::File::create(self.log_file())?;
        let mut command = Command::new(self.venv().join("bin/python"));
        command
            .arg(self.front_script())
            .env("CHFRONT_PORT", Self::port()?.to_string())
            .env("CHFRONT_DATA", self.state_dir().join("data"))
            .env("CHFRONT_USERS", self.users_file())
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a Ctrl-C meant for `cargo xtask dev` must not kill the engine
        // mid-write; the task that started it stops it cleanly instead.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().context("starting the ClickHouse front")?;
        fs::write(self.pid_file(), child.id().to_string())?;

        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                let _ = fs::remove_file(self.pid_file());
                bail!(
                    "the ClickHouse front exited ({status}):\n{}",
                    log_tail(&self.log_file())
                );
            }
            if self.answers().await {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the ClickHouse front did not answer within 90 s:\n{}",
            log_tail(&self.log_file())
        )
    }

    /// Stops the server if it runs (SIGTERM, then SIGKILL after 15 s).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let Some(pid) = self.running_pid() else {
            let _ = fs::remove_file(self.pid_file());
            return Ok(());
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && is_alive(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if is_alive(pid) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    /// The pid of a running front of this checkout, from the pid file. A stale pid file (after
    /// a reboot, or copied with the folder) may name another process: only a process running
    /// this checkout's front.py counts.
    pub fn running_pid(&self) -> Option<Pid> {
        let pid: i32 = fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let script = self.front_script();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| Path::new(std::str::from_utf8(arg).unwrap_or("")) == script);
        let pid = Pid::from_raw(pid);
        (ours && is_alive(pid)).then_some(pid)
    }

    /// Whether the server answers `/ping`.
    pub async fn answers(&self) -> bool {
        let Ok(url) = Self::url() else { return false };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build();
        match client {
            Ok(client) => client
                .get(format!("{url}/ping"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Err(_) => false,
        }
    }

    /// Creates the venv with the engine on first use, and again when requirements change.
    fn ensure_venv(&self) -> anyhow::Result<()> {
        let requirements = fs::read_to_string(self.requirements())?;
        let stamp = self.venv().join(".chgate-requirements");
        if fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
            return Ok(());
        }
        eprintln!(
            "Installing the ClickHouse engine (chdb-core) into {}",
            self.venv().display()
        );
        if !self.venv().join("bin/python").exists() {
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
            run(Command::new(&python).args(["-m", "venv"]).arg(self.venv()))
                .with_context(|| format!("creating a venv with {python} (on Debian: apt-get install python3-venv)"))?;
        }
        run(Command::new(self.venv().join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(self.requirements()))
        .context("installing the ClickHouse engine from PyPI")?;
        fs::write(stamp, requirements)?;
        Ok(())
    }

    /// Writes the users file on first start: `default` without a password (as a fresh server
    /// has it) and the application user with a random password.
    fn ensure_users_file(&self) -> anyhow::Result<()> {
        if self.users_file().exists() {
            return Ok(());
        }
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let users = json!({ "users": {
            "default": { "password": "" },
            APP_USER: { "password": password },
        }});
        fs::write(self.users_file(), serde_json::to_vec_pretty(&users)?)?;
        Ok(())
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status()?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
