//! `cargo xtask package` for real: the static release build, the zip's layout and modes, and the
//! packaged handler starting from `dist/` as the Functions host starts it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xtask::package::{self, EXECUTABLE, FUNCTION_FILES};

/// The host's own start-up limit (`InitializationTimeout`, and Flex's app initialisation).
const READY_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn the_package_is_the_app_root_with_a_static_handler_that_starts_as_the_host_starts_it() -> anyhow::Result<()> {
    let root = xtask::repo_root();
    let package = package::package(&root)?;
    println!("{package:#?}");

    check_zip(&root, &package.zip)?;
    check_static(&package.binary)?;
    let mode = fs::metadata(&package.binary)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "dist/handler has mode {mode:o}");

    start_as_the_host_does(&package.dist)
}

/// The entries are exactly the app root's files, with forward slashes and nothing outside it;
/// only the handler is executable; nothing local or secret is in it.
fn check_zip(root: &Path, zip: &Path) -> anyhow::Result<()> {
    let mut expected: BTreeSet<String> = ["host.json", EXECUTABLE, "access.toml", ".funcignore"]
        .map(String::from)
        .into();
    for function in package::function_dirs(&root.join("functions"))? {
        let name = function.file_name().context("a function folder")?.to_string_lossy();
        for file in FUNCTION_FILES {
            if function.join(file).is_file() {
                expected.insert(format!("{name}/{file}"));
            }
        }
    }
    assert!(
        expected.contains("kpi/query.sql") && expected.contains("health/function.json"),
        "functions/ lost the folders this test expects: {expected:?}"
    );

    let mut archive = zip::ZipArchive::new(fs::File::open(zip).with_context(|| format!("opening {}", zip.display()))?)?;
    let mut found = BTreeSet::new();
    for index in 0..archive.len() {
        let entry = archive.by_index(index)?;
        let name = entry.name()?.into_owned();
        assert!(
            entry.enclosed_name().is_some()
                && !name.starts_with("./")
                && !name.starts_with('/')
                && !name.contains('\\')
                && !name.split('/').any(|part| part == ".."),
            "entry {name:?} is not a plain relative path"
        );
        let forbidden = name.starts_with("target/")
            || name
                .split('/')
                .any(|part| part == ".local" || part == "local.settings.json")
            || name.ends_with(".pem")
            || name.ends_with(".key");
        assert!(!forbidden, "entry {name:?} must never be packaged");
        // The Unix mode sits in the high half of the external attributes.
        let mode = entry.external_attributes() >> 16;
        let wanted = if name == EXECUTABLE { 0o100755 } else { 0o100644 };
        assert_eq!(mode, wanted, "entry {name:?} has mode {mode:o}");
        found.insert(name);
    }
    assert_eq!(found, expected, "the zip's entries");
    Ok(())
}

/// `file` says the binary is static (or, without `file`, ldd says it is not dynamic).
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let (tool, output) = match Command::new("file").arg(binary).output() {
        Ok(output) => ("file", output),
        Err(_) => ("ldd", Command::new("ldd").arg(binary).output().context("running ldd")?),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A static-pie binary made by a wrong linker is "dynamically linked, interpreter ...",
    // which glibc's ldd still calls "statically linked": `file` is the one to trust.
    let static_ = match tool {
        "file" => {
            (said.contains("statically linked") || said.contains("static-pie linked")) && !said.contains("interpreter")
        }
        _ => said.contains("not a dynamic executable") || said.contains("statically linked"),
    };
    if !static_ {
        bail!("{tool} {} does not say it is static:\n{said}", binary.display());
    }
    println!("{tool}: {}", said.trim());
    Ok(())
}

/// Stands in for the Functions host starting the custom handler: working directory the app
/// root, the port in FUNCTIONS_CUSTOMHANDLER_PORT, the app settings as environment and nothing
/// else, then `GET /` every 25 ms until any HTTP answer (the host's readiness check).
fn start_as_the_host_does(dist: &Path) -> anyhow::Result<()> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let log_path = dist
        .parent()
        .context("dist/ has a parent")?
        .join("target/package/handler-start.log");
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(dist.join(EXECUTABLE));
    command
        .current_dir(dist)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env(
            "FUNCTIONS_CUSTOMHANDLER_WORKER_ID",
            "2f1d3c4b-0000-4000-8000-00000000c0de",
        )
        // The deployment's issuer, as its app settings name it; no development issuer is
        // allowed (no CHGATE_ALLOW_DEV_ISSUERS), as in Azure.
        .env(
            "CHGATE_ISSUER__ENTRA__URL",
            "https://login.microsoftonline.com/3f1b8e62-5c1d-4c6e-9a51-7d0c2f4e8a10/v2.0",
        )
        .env("CHGATE_ISSUER__ENTRA__AUDIENCES", "api://chgate")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The ClickHouse the test run uses, when it names one; the handler starts without reaching it.
    for name in [
        "CLICKHOUSE_URL",
        "CLICKHOUSE_USER",
        "CLICKHOUSE_PASSWORD",
        "CLICKHOUSE_DATABASE",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let mut handler = Running(command.spawn().context("starting dist/handler")?);
    let log_of = || fs::read_to_string(&log_path).unwrap_or_default();

    let began = Instant::now();
    loop {
        if let Some(status) = handler.0.try_wait()? {
            bail!(
                "dist/handler exited ({status}) before it answered; its output:\n{}",
                log_of()
            );
        }
        if let Some(status_line) = answers(port) {
            println!(
                "dist/handler answered GET / after {} ms: {status_line}",
                began.elapsed().as_millis()
            );
            break;
        }
        if began.elapsed() > READY_WITHIN {
            bail!(
                "dist/handler did not answer on 127.0.0.1:{port} within {READY_WITHIN:?}; its output:\n{}",
                log_of()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    handler.stop()
}

/// The status line of an HTTP answer to `GET /`, if anything answered.
fn answers(port: u16) -> Option<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..read]);
    let line = text.lines().next()?;
    line.starts_with("HTTP/1.").then(|| line.to_owned())
}

/// The started handler; killed if the test fails before stopping it.
#[derive(Debug)]
struct Running(Child);

impl Running {
    /// SIGTERM, as the host stops it, then SIGKILL after 10 s.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.0.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dist/handler did not stop within 10 s of SIGTERM")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
