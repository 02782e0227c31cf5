//! The application: settings in, a bound HTTP server out.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};
use anyhow::Context;

use crate::http;
use crate::settings::Settings;

/// A server bound to its port and ready to run.
pub struct Application {
    port: u16,
    server: Server,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds 127.0.0.1 on the configured port: the Functions host calls the handler on
    /// loopback only, so nothing else needs to reach it.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", settings.port))
            .with_context(|| format!("binding 127.0.0.1:{}", settings.port))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(|| App::new().configure(http::routes))
            .listen(listener)?
            .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
