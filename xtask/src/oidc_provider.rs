//! A real OpenID provider for the interop tests: panva's `oidc-provider` (the npm package, a
//! certified OpenID Connect implementation) run by Node.js on loopback, from
//! `xtask/oidc/server.mjs`.
//!
//! It issues JWT access tokens (RS256, `typ: at+jwt`) through the client_credentials grant
//! (client_secret_basic) for the resource indicator [`AUDIENCE`], adding each client's extra
//! claims (roles, tenant). `POST <issuer>/test/rotate` rotates its signing key without a restart
//! (see [`OidcProvider::rotate_signing_key`]).
//!
//! Everything it needs lives under `.local/oidc/` (git-ignored): the npm packages (installed
//! with `npm ci` from `xtask/oidc/package-lock.json`, again whenever that changes), a copy of
//! the server script, the pid file and `provider.log`. Every start makes new keys and serves
//! the clients it is given; nothing persists between runs.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::npm::find_on_path;
use crate::process::{is_alive, log_tail};
use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// The port used unless `CHGATE_OIDC_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 18124;

/// The resource indicator (audience) the provider issues tokens for by default; the
/// `aud` claim of its access tokens.
pub const AUDIENCE: &str = "api://chgate";

/// Another API's audience the provider also issues tokens for.
pub const OTHER_AUDIENCE: &str = "api://another-api";

/// How long the provider gets to answer its discovery document after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A confidential client of the provider (client_credentials, client_secret_basic).
#[derive(Debug, Clone, PartialEq)]
pub struct TestClient {
    pub client_id: String,
    pub client_secret: String,
    /// Extra claims (a JSON object; `null` means none) put into every access token issued to
    /// this client. They cannot override the standard ones (iss, sub, aud, exp, ...).
    pub claims: serde_json::Value,
}

impl TestClient {
    fn new(client_id: &str, claims: serde_json::Value) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: format!("{client_id}-secret"),
            claims,
        }
    }
}

/// The clients `cargo xtask test` registers; each one's secret is `<client_id>-secret`.
pub fn test_clients() -> Vec<TestClient> {
    vec![
        // An analyst of tenant "acme": may read analytics, scoped to its tenant.
        TestClient::new("analyst-acme", json!({ "roles": ["Analytics.Read"], "tid": "acme" })),
        // An analyst of another tenant, "globex": the same role, a different tenant (for
        // checking that tenants do not see each other's data).
        TestClient::new(
            "analyst-globex",
            json!({ "roles": ["Analytics.Read"], "tid": "globex" }),
        ),
        // An administrator: the admin role and no tenant claim at all.
        TestClient::new("admin", json!({ "roles": ["Analytics.Admin"] })),
    ]
}

/// A running provider, started by [`OidcProvider::start`]. Stop it with
/// [`OidcProvider::stop`]; dropping it kills the process (SIGKILL) as a last resort.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    pid: Pid,
    port: u16,
    dir: PathBuf,
    stopped: bool,
}

impl OidcProvider {
    /// Installs the provider when needed (`npm ci` into `.local/oidc`, again whenever
    /// `xtask/oidc/package-lock.json` changes) and starts it with `clients`, waiting until it
    /// answers its discovery document (failing with the log's tail after 30 s).
    ///
    /// A provider left running by an earlier, interrupted run of this checkout is stopped
    /// first.
    pub async fn start(clients: &[TestClient]) -> anyhow::Result<OidcProvider> {
        let root = crate::repo_root();
        let dir = state_dir(&root);
        let port = port()?;
        let node = find_on_path("node").context(
            "`node` is not on PATH: the test OpenID provider (oidc-provider) needs Node.js 20.18 \
             or later with npm (on Debian: apt-get install nodejs npm)",
        )?;
        check_node_version(&node)?;
        ensure_installed(&root)?;

        stop_stale(&dir).await;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} is in use (an OpenID provider of another checkout?): stop it, or \
                 choose another port with CHGATE_OIDC_PORT"
            );
        }

        // Node resolves the script's imports from the folder the script is in (ESM ignores
        // NODE_PATH), so the script runs from a copy next to node_modules.
        let script = dir.join("server.mjs");
        fs::copy(root.join("xtask/oidc/server.mjs"), &script)
            .context("copying xtask/oidc/server.mjs to .local/oidc")?;

        let log = fs::File::create(log_file(&dir))?;
        let mut command = Command::new(&node);
        command
            .arg(&script)
            .current_dir(&dir)
            .env("OIDC_PORT", port.to_string())
            // A second audience, so tests can show tokens meant for another API are refused.
            .env("OIDC_AUDIENCES", format!("{AUDIENCE},{OTHER_AUDIENCE}"))
            .env("OIDC_CLIENTS", clients_json(clients)?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a Ctrl-C at the terminal goes to the task that started it,
        // which stops it (or the next start cleans it up through the pid file).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} {}", node.display(), script.display()))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        fs::write(pid_file(&dir), pid.to_string())?;
        let mut provider = OidcProvider {
            child,
            pid,
            port,
            dir,
            stopped: false,
        };

        let client = http_client()?;
        let discovery = format!("{}/.well-known/openid-configuration", provider.issuer());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = provider.child.try_wait()? {
                provider.stopped = true;
                let _ = fs::remove_file(pid_file(&provider.dir));
                bail!(
                    "the OpenID provider exited ({status}):\n{}",
                    log_tail(&log_file(&provider.dir))
                );
            }
            if let Ok(response) = client.get(&discovery).send().await
                && response.status().is_success()
            {
                return Ok(provider);
            }
            if Instant::now() >= deadline {
                let tail = log_tail(&log_file(&provider.dir));
                provider.stop().await?;
                bail!("the OpenID provider did not answer within 30 s:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The issuer URL, e.g. `http://127.0.0.1:18124` (no trailing slash); the discovery
    /// document is at `<issuer>/.well-known/openid-configuration`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Environment for the test processes: the issuer and the audience to expect.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CHGATE_TEST_OIDC_ISSUER", self.issuer()),
            ("CHGATE_TEST_OIDC_AUDIENCE", AUDIENCE.to_owned()),
        ]
    }

    /// Rotates the signing key (`POST <issuer>/test/rotate`): a new RSA key with a new `kid`
    /// signs from now on; the JWKS lists it first and still every earlier key, so tokens
    /// issued before stay valid. Returns the new `kid`.
    pub async fn rotate_signing_key(&self) -> anyhow::Result<String> {
        rotate(&self.issuer()).await
    }

    /// Stops the provider: SIGTERM, then SIGKILL if it has not exited after 5 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let _ = fs::remove_file(pid_file(&self.dir));
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        self.child.wait().context("waiting for the OpenID provider")?;
        Ok(())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if !self.stopped && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_file(pid_file(&self.dir));
        }
    }
}

/// `POST <issuer>/test/rotate`; returns the new signing key's `kid`.
pub async fn rotate(issuer: &str) -> anyhow::Result<String> {
    let response = http_client()?
        .post(format!("{issuer}/test/rotate"))
        .send()
        .await
        .context("asking the OpenID provider to rotate its key")?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("key rotation failed ({status}): {}", String::from_utf8_lossy(&body));
    }
    let body: serde_json::Value = serde_json::from_slice(&body)?;
    body["kid"]
        .as_str()
        .map(str::to_owned)
        .context("the rotation answer names no kid")
}

/// The port from `CHGATE_OIDC_PORT`, or [`DEFAULT_PORT`].
pub fn port() -> anyhow::Result<u16> {
    match std::env::var("CHGATE_OIDC_PORT") {
        Ok(port) => port.parse().context("CHGATE_OIDC_PORT is not a port number"),
        Err(_) => Ok(DEFAULT_PORT),
    }
}

fn state_dir(root: &Path) -> PathBuf {
    root.join(".local/oidc")
}
fn pid_file(dir: &Path) -> PathBuf {
    dir.join("provider.pid")
}
fn log_file(dir: &Path) -> PathBuf {
    dir.join("provider.log")
}

/// The clients as the server reads them from `OIDC_CLIENTS`.
fn clients_json(clients: &[TestClient]) -> anyhow::Result<String> {
    let clients = clients
        .iter()
        .map(|client| {
            let claims = match &client.claims {
                serde_json::Value::Null => json!({}),
                claims @ serde_json::Value::Object(_) => claims.clone(),
                other => bail!(
                    "the claims of client {} must be a JSON object, not {other}",
                    client.client_id
                ),
            };
            Ok(json!({
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "claims": claims,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(serde_json::to_string(&clients)?)
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        // Loopback only: an HTTP_PROXY in the environment must not be used.
        .no_proxy()
        .build()?)
}

fn ensure_installed(root: &Path) -> anyhow::Result<()> {
    crate::npm::ensure_installed(
        root,
        "oidc",
        "node_modules/oidc-provider/package.json",
        "the OpenID provider (oidc-provider)",
    )
    .map(|_| ())
}

/// Fails clearly on a Node.js too old for oidc-provider 9 (which uses `URL.parse`, new in
/// 20.18; on Node 20 it warns "Unsupported runtime" but works).
fn check_node_version(node: &Path) -> anyhow::Result<()> {
    let output = Command::new(node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", node.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match parse_node_version(&version) {
        Some(v) if v >= (20, 18) => Ok(()),
        Some(_) => bail!(
            "Node.js {version} is too old for the test OpenID provider (oidc-provider 9): use \
             Node.js 20.18 or later (22 LTS preferred)"
        ),
        None => bail!("cannot read the Node.js version from {version:?}"),
    }
}

/// `v20.20.2` → (20, 20).
fn parse_node_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.strip_prefix('v')?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Stops a provider an earlier run of this checkout left behind (its pid file names a live
/// process running this checkout's server script).
async fn stop_stale(dir: &Path) {
    let Some(pid) = fs::read_to_string(pid_file(dir))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
    else {
        return;
    };
    let script = dir.join("server.mjs");
    let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == script.as_os_str().as_encoded_bytes())
    });
    if ours && is_alive(pid) {
        eprintln!("Stopping the OpenID provider an earlier run left running (pid {pid})");
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && is_alive(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if is_alive(pid) {
            let _ = kill(pid, Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = fs::remove_file(pid_file(dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clients_have_their_secrets_and_claims() {
        let clients = test_clients();
        let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!(ids, ["analyst-acme", "analyst-globex", "admin"]);
        for client in &clients {
            assert_eq!(client.client_secret, format!("{}-secret", client.client_id));
        }
        assert_eq!(clients[0].claims["tid"], "acme");
        assert_eq!(clients[1].claims["tid"], "globex");
        assert_eq!(clients[1].claims["roles"], json!(["Analytics.Read"]));
        assert_eq!(clients[2].claims, json!({ "roles": ["Analytics.Admin"] }));
    }

    #[test]
    fn clients_are_passed_as_the_server_reads_them() -> anyhow::Result<()> {
        let mut clients = test_clients();
        clients[2].claims = serde_json::Value::Null;
        let parsed: serde_json::Value = serde_json::from_str(&clients_json(&clients)?)?;
        assert_eq!(
            parsed[0],
            json!({
                "client_id": "analyst-acme",
                "client_secret": "analyst-acme-secret",
                "claims": { "roles": ["Analytics.Read"], "tid": "acme" },
            })
        );
        assert_eq!(parsed[2]["claims"], json!({}));

        clients[2].claims = json!(["not", "an", "object"]);
        assert!(clients_json(&clients).is_err());
        Ok(())
    }

    #[test]
    fn node_versions() {
        assert_eq!(parse_node_version("v20.20.2"), Some((20, 20)));
        assert_eq!(parse_node_version("v22.12.0"), Some((22, 12)));
        assert_eq!(parse_node_version("20.1"), None);
        assert!(parse_node_version("v20.18.0") >= Some((20, 18)));
        assert!(parse_node_version("v20.17.1") < Some((20, 18)));
    }
}
