//! Noticing that a client has gone while its request is still being worked on. actix-web
//! keeps polling a handler whose client disconnected (actix/actix-web#3462), so a query would
//! run to its end for nobody. Each connection keeps a duplicate of its socket's descriptor;
//! a request races its work against that socket reaching end-of-file, and dropping the work
//! drops the ClickHouse response, which cancels the query.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use actix_web::dev::Extensions;

/// The connection's socket, as a second descriptor (never read from, only peeked at).
#[derive(Debug, Clone)]
pub struct ClientSocket(Arc<OwnedFd>);

/// Stores the socket of a new connection (`HttpServer::on_connect`).
pub fn remember_socket(connection: &dyn std::any::Any, extensions: &mut Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
    {
        extensions.insert(ClientSocket(Arc::new(fd)));
    }
}

impl ClientSocket {
    /// A watch on the socket (its own descriptor, registered once), if one can be made.
    pub fn watch(&self) -> Option<Watch> {
        let stream = self.0.try_clone().map(std::net::TcpStream::from).ok()?;
        stream.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(stream).ok().map(Watch)
    }
}

/// A watch on a client's socket, for one request.
#[derive(Debug)]
pub struct Watch(tokio::net::TcpStream);

impl Watch {
    /// Resolves when the client has closed the connection. Data from the client (a pipelined
    /// request) means it is still there: watching stops and this never resolves.
    pub async fn gone(&self) {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }
}
