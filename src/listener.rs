//! One HTTP/1 listener loop, for the webhook and for the review desk: take
//! a connection slot (at the limit the loop waits, and new connections wait
//! in the kernel's backlog), accept with `TCP_NODELAY`, serve the
//! connection with hyper under the given limits, and stop accepting when
//! the shutdown future fires. The connections still open are handed back
//! ([`Connections`]) for the caller to drain in its own shutdown order.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long the loop pauses after a failed accept (out of file
/// descriptors and the like) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What hyper enforces on every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// At most this many headers; hyper's default when `None`.
    pub max_headers: Option<usize>,
    /// The read buffer, so the longest request head; hyper's default when
    /// `None`. Longer → `431`.
    pub max_head_bytes: Option<usize>,
}

/// The connections a stopped listener leaves open: `shutdown` lets their
/// requests finish (each connection closes after its current response).
pub type Connections = GracefulShutdown;

/// Serves `listener` until `shutdown` fires, at most `slots` connections at
/// once, each request answered by `handler` with the client's address.
/// `name` tells the listeners apart in the log.
pub async fn serve_until<H, F>(
    name: &'static str,
    listener: &TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Connections
where
    H: Fn(IpAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let connections = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    if let Some(max_headers) = limits.max_headers {
        http.max_headers(max_headers);
    }
    if let Some(max_head_bytes) = limits.max_head_bytes {
        http.max_buf_size(max_head_bytes);
    }
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(message = "accept failed", listener = name, %error);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let peer = peer.ip();
                let handler = handler.clone();
                let service = service_fn(move |request| handler(peer, request));
                let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(message = "connection ended with an error", listener = name, %error);
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    connections
}
