//! Accepting connections: TLS when configured (rustls, optionally asking for client certificates),
//! HTTP/1.1 or HTTP/2 on each (told by ALPN, or by the first bytes), timeouts so slow or half-open clients cannot pin the server, and a
//! graceful stop.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tower::ServiceExt;

use crate::errors::{Error, Result};

/// A client has this long to send its request headers (HTTP/1.1) or finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connections are pinged this often; one that does not answer in `PING_TIMEOUT` is closed.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop lets requests in flight finish before it drops their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Connections open at once at most; beyond it new ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 10_000;

/// The server's certificate chain and key (PEM), and the CAs whose client certificates it demands (None:
/// no client certificates).
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

pub fn acceptor(tls: ServerTls) -> Result<tokio_rustls::TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("TLS {what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument("TLS certificate: no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad("key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setup", &e))?;
    let builder = match tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert.map_err(|e| bad("client CA", &e))?).map_err(|e| bad("client CA", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad("client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| bad("certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The two protocols a connection may speak; HTTP/2 clients open with this preface (cleartext), or say
/// `h2` in TLS's ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a cleartext connection speaks, from its first bytes (left unread); None when the client
/// does not send enough to tell within `HANDSHAKE_TIMEOUT` (a silent or half-open client), or goes away.
async fn sniff(stream: &tokio::net::TcpStream) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // A prefix of the preface so far: look again shortly (peek returns at once while bytes wait).
        tokio::time::sleep_until((tokio::time::Instant::now() + Duration::from_millis(5)).min(deadline)).await;
    }
}

/// The connection builders, configured once.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .max_concurrent_streams(1000);
        Self { http1, http2 }
    }

    /// Serve one connection in `protocol` until it ends, or until a graceful stop lets it finish.
    async fn serve<I>(&self, io: I, protocol: Protocol, app: axum::Router, watcher: Watcher) -> Result<(), hyper::Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let io = TokioIo::new(io);
        match protocol {
            Protocol::Http1 => watcher.watch(self.http1.serve_connection(io, service)).await,
            Protocol::Http2 => watcher.watch(self.http2.serve_connection(io, service)).await,
        }
    }
}

/// One connection: its TLS handshake (when configured) and its protocol, each within `HANDSHAKE_TIMEOUT`,
/// then its requests until it ends.
async fn connection(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builders: &Builders,
    app: axum::Router,
    watcher: Watcher,
) -> Result<(), String> {
    let Some(tls) = tls else {
        let protocol = sniff(&stream).await.ok_or("no request in time")?;
        return builders.serve(stream, protocol, app, watcher).await.map_err(|e| e.to_string());
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
    builders.serve(stream, protocol, app, watcher).await.map_err(|e| e.to_string())
}

/// Serve `app` on `socket` until `stopping` turns true; then stop accepting, and wait for the
/// connections' requests in flight (up to the shutdown grace) before returning.
pub async fn run(
    socket: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let builders = Arc::new(Builders::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = super::shared::stopped(&mut stopping) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: wait a little rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = super::shared::stopped(&mut stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, builders, watcher) = (app.clone(), tls.clone(), builders.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection(stream, tls, &builders, app, watcher).await {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
        });
    }
    drop(socket);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("requests still running after the shutdown grace were dropped");
        }
    }
}
