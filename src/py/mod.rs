//! The Python face of the core: the module `stigmer_handshake._core`. Argument extraction, the pyclasses,
//! the exception classes and the hand-off of futures to asyncio live here; every decision lives in
//! `core::Core`, so another face (a network server) calls the same operations without PyO3.

pub mod args;
pub mod asyncio;
pub mod errors;
pub mod handshake;
pub mod token;
pub mod types;

use pyo3::prelude::*;

/// The module's contents.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<token::PyTaskToken>()?;
    m.add_class::<handshake::PyCore>()?;
    m.add_class::<types::PyOutcome>()?;
    m.add_class::<types::PyExecution>()?;
    m.add_class::<types::PySettlement>()?;
    m.add_class::<types::PyHeartbeatReply>()?;
    m.add_class::<types::PyReconcileReport>()?;
    m.add_function(wrap_pyfunction!(token::fingerprint_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(asyncio::drain, m)?)?;
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
