//! How to reach ClickHouse: a server named by `CLICKHOUSE_URL`, or the local one.
//!
//! The same variables (`CLICKHOUSE_URL`, `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`,
//! `CLICKHOUSE_DATABASE`) configure the handler, the tests and these tasks, so a server that
//! works for one works for all.

use std::path::PathBuf;

use clickhouse::Client;

/// Where ClickHouse is and who to connect as.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
    /// The local front's users file, when the server is the local one (for rotation tests).
    pub users_file: Option<PathBuf>,
}

impl Connection {
    /// The server named by `CLICKHOUSE_URL`, if set.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var("CLICKHOUSE_URL").ok().filter(|u| !u.is_empty())?;
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Some(Self {
            url,
            user: var("CLICKHOUSE_USER", "default"),
            password: var("CLICKHOUSE_PASSWORD", ""),
            database: var("CLICKHOUSE_DATABASE", "default"),
            users_file: std::env::var_os("CHGATE_CLICKHOUSE_USERS_FILE").map(PathBuf::from),
        })
    }

    /// A client of the official crate with its defaults (LZ4 compression, validation on).
    pub fn client(&self) -> Client {
        Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_database(&self.database)
    }

    /// The variables a child process needs to use this connection.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("CLICKHOUSE_URL", self.url.clone()),
            ("CLICKHOUSE_USER", self.user.clone()),
            ("CLICKHOUSE_PASSWORD", self.password.clone()),
            ("CLICKHOUSE_DATABASE", self.database.clone()),
        ];
        if let Some(users_file) = &self.users_file {
            vars.push(("CHGATE_CLICKHOUSE_USERS_FILE", users_file.display().to_string()));
        }
        vars
    }
}
