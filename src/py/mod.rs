//! The Python face of the core: the module `stigmer_handshake._core`. Argument extraction, the pyclasses,
//! the exception classes and the hand-off of futures to asyncio live here; every decision lives in
//! `core::Core`, so another face (a network server) calls the same operations without PyO3.

pub mod args;
pub mod asyncio;
pub mod errors;
pub mod handshake;
pub mod server;
pub mod settings;
pub mod token;
pub mod types;

use pyo3::prelude::*;

/// The module's contents.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<token::PyTaskToken>()?;
    m.add_class::<handshake::PyCore>()?;
    m.add_class::<types::PyOutcome>()?;
    m.add_class::<types::PyExecution>()?;
    m.add_class::<types::PySettlement>()?;
    m.add_class::<types::PyHeartbeatReply>()?;
    m.add_class::<types::PyReconcileReport>()?;
    m.add_class::<server::PyServer>()?;
    m.add_function(wrap_pyfunction!(token::fingerprint_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(asyncio::drain, m)?)?;
    m.add_function(wrap_pyfunction!(server::parse_api_keys, m)?)?;
    settings::register(m)?;
    errors::register(m)
}
