//! stigmer-handshake's Rust core: task tokens, the execution store, delivery to Temporal, and the
//! Python module `stigmer_handshake._core`.

pub mod delivery;
pub mod errors;
pub mod failpoint;
pub mod handshake;
pub mod html;
pub mod metrics;
pub mod pump;
pub mod reconcile;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod temporal;
pub mod token;

/// Types generated from `proto/` by prost.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

use pyo3::prelude::*;

/// Logs and spans of the core to stderr, when `STIGMER_HANDSHAKE_LOG` holds a filter (`info`,
/// `_core=debug`, ...); as JSON lines (one per event and per closed span, with the enclosing spans) when
/// `STIGMER_HANDSHAKE_LOG_FORMAT=json`. Off otherwise. Fields name tokens by fingerprint only.
fn init_logging() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let Ok(filter) = std::env::var("STIGMER_HANDSHAKE_LOG") else { return };
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::CLOSE).with_writer(std::io::stderr);
    // Another subscriber already installed (an embedding application's) wins.
    let _ = if std::env::var("STIGMER_HANDSHAKE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    init_logging();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<token::PyTaskToken>()?;
    m.add_class::<handshake::PyCore>()?;
    m.add_class::<handshake::PyOutcome>()?;
    m.add_class::<handshake::PyExecution>()?;
    m.add_class::<handshake::PySettlement>()?;
    m.add_class::<handshake::PyHeartbeatReply>()?;
    m.add_class::<handshake::PyReconcileReport>()?;
    m.add_function(wrap_pyfunction!(token::fingerprint_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::drain, m)?)?;
    m.add("HandshakeError", py.get_type::<errors::HandshakeError>())?;
    m.add("TokenError", py.get_type::<errors::TokenError>())?;
    m.add("InvalidInput", py.get_type::<errors::InvalidInput>())?;
    m.add("StoreError", py.get_type::<errors::StoreError>())?;
    m.add("StoreUnavailable", py.get_type::<errors::StoreUnavailable>())?;
    m.add("StoreAuthError", py.get_type::<errors::StoreAuthError>())?;
    m.add("SchemaMismatch", py.get_type::<errors::SchemaMismatch>())?;
    m.add("TokenKeyError", py.get_type::<errors::TokenKeyError>())?;
    m.add("CapabilityError", py.get_type::<errors::CapabilityError>())?;
    m.add("NamespaceMismatch", py.get_type::<errors::NamespaceMismatch>())?;
    m.add("ExecutionNotFound", py.get_type::<errors::ExecutionNotFound>())?;
    m.add("InvalidState", py.get_type::<errors::InvalidState>())?;
    m.add("DeliveryError", py.get_type::<errors::DeliveryError>())?;
    m.add("ConnectError", py.get_type::<errors::ConnectError>())?;
    m.add("ActivityGone", py.get_type::<errors::ActivityGone>())?;
    m.add("TemporalRpcError", py.get_type::<errors::TemporalRpcError>())?;
    m.add("WaitTimeout", py.get_type::<errors::WaitTimeout>())?;
    Ok(())
}
