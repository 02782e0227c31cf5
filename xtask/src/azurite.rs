//! Azurite, the Azure Storage emulator (the npm package), for the ingest spool's tests: blob
//! and queue services on loopback, in memory, started by `cargo xtask test` and stopped after.
//!
//! Installed with `npm ci` into `.local/azurite/` from `xtask/azurite/`. The account is
//! Azurite's well-known `devstoreaccount1`; [`account_key`] is its published key, used only
//! to sign SAS tokens for the tests.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::npm::find_on_path;
use crate::process::{is_alive, log_tail};

/// Ports unless `CHGATE_AZURITE_BLOB_PORT` / `CHGATE_AZURITE_QUEUE_PORT` say otherwise.
pub const DEFAULT_BLOB_PORT: u16 = 18130;
pub const DEFAULT_QUEUE_PORT: u16 = 18131;
/// Azurite serves tables too; it needs a port of its own.
const TABLE_PORT: u16 = 18132;

/// Azurite's account.
pub const ACCOUNT: &str = "devstoreaccount1";

/// Azurite's published, well-known account key (the same in every installation).
pub fn account_key() -> &'static str {
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Azurite.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    pid: Pid,
    blob_port: u16,
    queue_port: u16,
    dir: PathBuf,
    stopped: bool,
}

impl Azurite {
    /// Installs Azurite when needed and starts its blob and queue services (in memory),
    /// waiting until both accept connections.
    pub async fn start() -> anyhow::Result<Azurite> {
        let root = crate::repo_root();
        let node = find_on_path("node")
            .context("`node` is not on PATH: Azurite (the Azure Storage emulator) needs Node.js with npm")?;
        let dir = crate::npm::ensure_installed(
            &root,
            "azurite",
            "node_modules/azurite/package.json",
            "Azurite (the Azure Storage emulator)",
        )?;
        stop_stale(&dir).await;
        let port = |name: &str, default: u16| -> anyhow::Result<u16> {
            match std::env::var(name) {
                Ok(port) => port.parse().with_context(|| format!("{name} is not a port number")),
                Err(_) => Ok(default),
            }
        };
        let blob_port = port("CHGATE_AZURITE_BLOB_PORT", DEFAULT_BLOB_PORT)?;
        let queue_port = port("CHGATE_AZURITE_QUEUE_PORT", DEFAULT_QUEUE_PORT)?;
        for port in [blob_port, queue_port] {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} is in use (an Azurite of another checkout?): stop it, or set CHGATE_AZURITE_BLOB_PORT / CHGATE_AZURITE_QUEUE_PORT"
                );
            }
        }
        let log = fs::File::create(dir.join("azurite.log"))?;
        let mut command = Command::new(&node);
        command
            .arg(dir.join("node_modules/azurite/dist/src/azurite.js"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &blob_port.to_string()])
            .args(["--queueHost", "127.0.0.1", "--queuePort", &queue_port.to_string()])
            .args(["--tableHost", "127.0.0.1", "--tablePort", &TABLE_PORT.to_string()])
            // The SDK sends a newer API version than this Azurite knows; the calls it makes
            // are the same.
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().context("starting Azurite")?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        fs::write(dir.join("azurite.pid"), pid.to_string())?;
        let mut azurite = Azurite {
            child,
            pid,
            blob_port,
            queue_port,
            dir,
            stopped: false,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = azurite.child.try_wait()? {
                azurite.stopped = true;
                bail!(
                    "Azurite exited ({status}):\n{}",
                    log_tail(&azurite.dir.join("azurite.log"))
                );
            }
            let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(blob_port) && up(queue_port) {
                return Ok(azurite);
            }
            if Instant::now() >= deadline {
                let tail = log_tail(&azurite.dir.join("azurite.log"));
                azurite.stop().await?;
                bail!("Azurite did not listen within 30 s:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.blob_port)
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`
    pub fn queue_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.queue_port)
    }

    /// Environment for the test processes.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CHGATE_TEST_AZURITE_BLOB", self.blob_endpoint()),
            ("CHGATE_TEST_AZURITE_QUEUE", self.queue_endpoint()),
        ]
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let _ = fs::remove_file(self.dir.join("azurite.pid"));
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        self.child.wait().context("waiting for Azurite")?;
        Ok(())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if !self.stopped && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_file(self.dir.join("azurite.pid"));
        }
    }
}

/// Stops an Azurite an earlier, interrupted run of this checkout left behind.
async fn stop_stale(dir: &std::path::Path) {
    let Some(pid) = fs::read_to_string(dir.join("azurite.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
    else {
        return;
    };
    let ours = fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("azurite.js"));
    if ours && is_alive(pid) {
        eprintln!("Stopping the Azurite an earlier run left running (pid {pid})");
        let _ = kill(pid, Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = fs::remove_file(dir.join("azurite.pid"));
}
