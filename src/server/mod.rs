//! The network face: one listener that serves gRPC (the seed's command and query services, our own
//! `HandshakeService`, health and reflection) and HTTP/JSON (webhooks, callback URLs, metrics) on the same
//! port, both backed by a `Core`. HTTP/1.1 and HTTP/2 (cleartext or TLS) on each connection.
//!
//! Every request is authenticated (`auth`) before it reaches the core, so a refusal changes nothing.

pub mod auth;
mod codes;
mod console;
mod grpc;
mod http;
mod listener;
mod resource;
mod session;
mod shared;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::Core;
use crate::errors::{Error, Result};
use auth::{ApiKey, Keys};
use shared::{public_url, Shared};

pub use shared::callback_url;

pub use listener::ServerTls;

/// How a server is set up. No `Debug`: it holds keys.
pub struct ServeSettings {
    /// `host:port` to listen on (port 0: any free port).
    pub listen: String,
    /// None: serve without authentication, allowed only on a loopback address with `insecure_localhost`.
    pub api_keys: Option<Vec<ApiKey>>,
    pub insecure_localhost: bool,
    pub tls: Option<ServerTls>,
    /// The URL callers reach this server at (behind a proxy); None: `http(s)://<listen address>`.
    pub public_url: Option<String>,
    /// Temporal's Web UI, for the console's links to parent workflows (e.g. `http://localhost:8233`).
    pub temporal_ui: Option<String>,
}

/// A running server: its address, and `close` for a graceful stop.
pub struct Server {
    address: SocketAddr,
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The base URL callers reach it at (`public_url`, or the listening address).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stop accepting connections, let requests in flight finish (up to `SHUTDOWN_GRACE`), then return.
    /// A second `close` returns at once.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Bind and start serving in the background on the current runtime.
pub async fn serve(core: Arc<Core>, settings: ServeSettings) -> Result<Server> {
    core.check_usable()?;
    let address = resolve(&settings.listen).await?;
    if settings.api_keys.is_none() && !(settings.insecure_localhost && address.ip().is_loopback()) {
        return Err(Error::InvalidArgument(format!(
            "serving {address} needs API keys; without them only a loopback address, and only with insecure_localhost"
        )));
    }
    if settings.api_keys.is_some() && settings.insecure_localhost {
        return Err(Error::InvalidArgument("give API keys or insecure_localhost, not both".into()));
    }
    let keys = Keys::new(settings.api_keys)?;
    let tls = settings.tls.map(listener::acceptor).transpose()?;
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving without TLS beyond loopback: API keys cross the network in the clear unless a proxy in front adds TLS");
    }
    let socket = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {address}: {e}")))?;
    let address = socket.local_addr().map_err(|e| Error::InvalidArgument(format!("cannot listen: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = match settings.public_url {
        Some(url) => public_url(&url)?,
        None => format!("{scheme}://{address}"),
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let temporal_ui = settings.temporal_ui.as_deref().map(public_url).transpose()?;
    let shared = Arc::new(Shared { core, keys, base_url: url.clone(), temporal_ui, stopping: stopping.clone() });
    let app = grpc::routes(&shared).await?.merge(http::routes(&shared));
    tracing::info!(%address, %url, tls = tls.is_some(), open = shared.keys.open(), "serving");
    let task = tokio::spawn(listener::run(socket, tls, app, stopping));
    Ok(Server { address, url, stop, task: std::sync::Mutex::new(Some(task)) })
}

async fn resolve(listen: &str) -> Result<SocketAddr> {
    let bad = |why: String| Error::InvalidArgument(format!("listen must be host:port, not {listen:?} ({why})"));
    let mut found = tokio::net::lookup_host(listen).await.map_err(|e| bad(e.to_string()))?;
    found.next().ok_or_else(|| bad("no address".into()))
}
