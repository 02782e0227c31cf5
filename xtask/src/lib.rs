//! Developer tasks for chgate, and the pieces the test suite shares with them: how to reach
//! ClickHouse, the local ClickHouse server, the sample analytics data, and the deployment
//! package.

pub mod azurite;
pub mod bench;
pub mod connection;
pub mod dev_issuer;
pub mod local_clickhouse;
pub mod npm;
pub mod oidc_provider;
pub mod package;
pub mod process;
pub mod sample;

use std::path::PathBuf;

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}
