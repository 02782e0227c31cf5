//! Shared test helpers: a fresh ClickHouse database per test, and a running handler.

use std::sync::LazyLock;

use chgate::settings::{ClickHouseSettings, Settings};
use chgate::startup::Application;
use clickhouse::Client;
use xtask::connection::Connection;

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        chgate::telemetry::init_subscriber();
    }
});

/// The ClickHouse the suite runs against.
pub fn connection() -> Connection {
    Connection::from_env().expect(
        "CLICKHOUSE_URL is not set: run the suite with `cargo xtask test`, which starts the \
         local ClickHouse, or point CLICKHOUSE_URL (and CLICKHOUSE_USER/PASSWORD) at a server",
    )
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

/// A handler running in this process on a free port.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub api_client: reqwest::Client,
    #[expect(
        dead_code,
        reason = "owned so that the test database lives as long as the app"
    )]
    pub database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    LazyLock::force(&TRACING);
    let database = TestDatabase::create().await;
    let connection = database.connection().clone();
    let settings = Settings {
        port: 0,
        clickhouse: ClickHouseSettings {
            url: connection.url,
            user: connection.user,
            password: connection.password,
            database: connection.database,
        },
    };
    let application = Application::build(settings)
        .await
        .expect("building the application");
    let address = format!("http://127.0.0.1:{}", application.port());
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
        api_client: reqwest::Client::new(),
        database,
    }
}

/// The ClickHouse error code in a crate error (`Code: N. DB::Exception: ...`).
pub fn error_code(error: &clickhouse::error::Error) -> Option<u32> {
    let text = error.to_string();
    let start = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
