//! Shared test helpers: a fresh ClickHouse database per test, and a running handler.

use std::sync::LazyLock;

use chgate::access::VerifyOptions;
use chgate::settings::{ClickHouseSettings, Settings};
use chgate::startup::Application;
use clickhouse::Client;
use serde_json::json;
use xtask::connection::Connection;
use xtask::dev_issuer::{DevIssuer, DevKey};

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        let settings = chgate::telemetry::TelemetrySettings {
            connection_string: None,
            span_delay: std::time::Duration::from_secs(5),
            metric_interval: std::time::Duration::from_secs(60),
        };
        let _ = chgate::telemetry::init(&settings);
    }
});

/// The ClickHouse the suite runs against.
pub fn connection() -> Connection {
    Connection::from_env().expect(
        "CLICKHOUSE_URL is not set: run the suite with `cargo xtask test`, which starts the \
         local ClickHouse, or point CLICKHOUSE_URL (and CLICKHOUSE_USER/PASSWORD) at a server",
    )
}

/// The ClickHouse server's `host:port`.
pub fn clickhouse_address() -> String {
    connection()
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// A database of its own for one test, dropped when the value goes out of scope (also when
/// the test fails).
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    connection: Connection,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let connection = connection();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        connection
            .client()
            .query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await
            .expect("creating the test database");
        let connection = Connection {
            database: name.clone(),
            ..connection
        };
        Self { name, connection }
    }

    /// A client of the official crate, with its defaults, using this database.
    pub fn client(&self) -> Client {
        self.connection.client()
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let client = connection().client();
        let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        // Drop runs outside any async context that could be blocked on: use a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(client.query(&sql).execute()))
        })
        .join();
    }
}

/// A handler running in this process on a free port, trusting its own token issuer.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub api_client: reqwest::Client,
    pub database: TestDatabase,
    /// The issuer the app trusts (the development issuer, on a free port).
    pub issuer: DevIssuer,
    /// A token for the default test caller: roles Test.Read and Analytics.Internal, tenant acme.
    pub token: String,
}

/// The fixture policy with `issuer` as its trusted issuer, written to a file of its own.
pub fn fixture_policy(issuer: &str) -> std::path::PathBuf {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = std::fs::read_to_string(fixtures.join("access.toml")).expect("fixture policy");
    let path = std::env::temp_dir().join(format!("chgate-access-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text.replace("http://127.0.0.1:0", issuer)).expect("writing the policy");
    path
}

/// Settings for the shipped catalog (functions/ and host.json at the repository root) instead
/// of the fixture one.
pub fn use_shipped_catalog(settings: &mut Settings) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    settings.functions_dir = root.join("functions");
    settings.host_json = root.join("host.json");
}

/// The fixture catalog (tests/fixtures/endpoints) over a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with the settings adjusted first.
pub async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let database = TestDatabase::create().await;
    let connection = database.connection().clone();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let issuer = DevIssuer::start(0, DevKey::generate().expect("key"))
        .await
        .expect("starting the issuer");
    let mut settings = Settings {
        port: 0,
        clickhouse: ClickHouseSettings {
            url: connection.url,
            user: connection.user,
            password: connection.password.into(),
            database: connection.database,
        },
        functions_dir: fixtures.join("endpoints"),
        host_json: fixtures.join("host.json"),
        response_buffer_bytes: chgate::settings::DEFAULT_RESPONSE_BUFFER_BYTES,
        access_policy: fixture_policy(issuer.url()),
        place: chgate::access::Place {
            in_azure: false,
            allow_dev_issuers: true,
        },
        // Tests rotate keys and expect the next unknown kid to refresh at once.
        token: VerifyOptions {
            min_refresh_gap: std::time::Duration::ZERO,
            ..VerifyOptions::default()
        },
        serving: chgate::settings::ServingSettings::default(),
        secrets: chgate::settings::SecretsSettings::default(),
        spool: None,
    };
    customise(&mut settings);
    let application = Application::build(settings).await.expect("building the application");
    let address = format!("http://127.0.0.1:{}", application.port());
    tokio::spawn(application.run_until_stopped());
    let token = issuer
        .token(
            "test-caller",
            json!({"roles": ["Test.Read", "Analytics.Internal"], "tid": "acme"}),
        )
        .expect("signing");
    // Every request carries the default caller's token unless it sets its own.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    let api_client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    TestApp {
        address,
        api_client,
        database,
        issuer,
        token,
    }
}

impl TestApp {
    /// `GET /api/<path>` with query-string pairs, as the default test caller.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.get_as(&self.token, path, query).await
    }

    /// `GET /api/<path>` with a bearer token.
    pub async fn get_as(&self, token: &str, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.api_client
            .get(format!("{}/api/{path}", self.address))
            .bearer_auth(token)
            .query(query)
            .send()
            .await
            .expect("GET request")
    }

    /// `POST /api/<path>` with a JSON body, as the default test caller.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.api_client
            .post(format!("{}/api/{path}", self.address))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("POST request")
    }

    /// A token from the app's issuer for `subject` with the given claims.
    pub fn token_for(&self, subject: &str, claims: serde_json::Value) -> String {
        self.issuer.token(subject, claims).expect("signing")
    }

    /// Stops the app's token issuer (an identity provider outage).
    pub async fn issuer_down(&self) {
        self.issuer.pause().await;
    }

    /// A token of an analyst of `tenant`.
    pub fn analyst_of(&self, tenant: &str) -> String {
        self.token_for(
            &format!("analyst@{tenant}"),
            json!({"roles": ["Analytics.Read"], "tid": tenant}),
        )
    }

    /// Loads `rows` sample events into this test's database.
    pub async fn seed_events(&self, rows: u64) {
        xtask::sample::load(&self.database.client(), "events", rows, xtask::sample::DEFAULT_SEED)
            .await
            .expect("loading sample events");
    }
}

/// Reads a problem+json response, checking its content type and status.
pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("content type")
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(body["code"].is_string() && body["detail"].is_string() && body["title"].is_string());
    body
}

/// A TCP forwarder to ClickHouse that a test can cut and restore, to make ClickHouse
/// unreachable without stopping the shared server.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    target: String,
    tasks: Option<tokio::task::JoinHandle<()>>,
    /// Every byte sent towards ClickHouse, to check what the handler asked for.
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("address").port();
        let mut proxy = Self {
            port,
            target: target.to_owned(),
            tasks: None,
            sent: Default::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = self.target.clone();
        let sent = self.sent.clone();
        self.tasks = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, sent) = (target.clone(), sent.clone());
                connections.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let upstream = async move {
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(n) = from_client.read(&mut buffer).await {
                            if n == 0 || to_server.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            sent.lock().expect("capture lock").extend_from_slice(&buffer[..n]);
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        }));
    }

    /// Closes the port and every open connection (the JoinSet aborts them when dropped).
    pub async fn cut(&mut self) {
        if let Some(task) = self.tasks.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebinding the proxy port");
        self.serve(listener);
    }
}

/// The ClickHouse error code in a crate error (`Code: N. DB::Exception: ...`).
pub fn error_code(error: &clickhouse::error::Error) -> Option<u32> {
    let text = error.to_string();
    let start = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The fixture endpoint's table, in the test's own database.
pub async fn create_clicks(app: &TestApp) {
    app.database
        .client()
        .query(
            "CREATE TABLE clicks (ts DateTime64(3), tenant_id String, path String, duration_ms UInt32, \
             tags Array(String)) ENGINE = MergeTree ORDER BY (tenant_id, ts) \
             SETTINGS non_replicated_deduplication_window = 1000",
        )
        .execute()
        .await
        .expect("creating clicks");
}
