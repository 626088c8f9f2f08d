//! stigmer-handshake's Rust core: task tokens, the execution store, delivery to Temporal (`core::Core`
//! owns every operation), and its Python face, the module `stigmer_handshake._core` (`py/`).

pub mod clock;
pub mod core;
pub mod delivery;
pub mod endpoint;
pub mod errors;
pub mod failpoint;
pub mod html;
pub mod metrics;
pub mod paging;
pub mod payload;
pub mod pump;
pub mod py;
pub mod reconcile;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod store;
pub mod temporal;
pub mod token;
pub mod vocabulary;

/// Types generated from `proto/` by prost.
// tonic names the stream types of the seed's lower-case rpc names after them (`subscribeStream`).
#[allow(clippy::all, clippy::pedantic, non_camel_case_types)]
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
    init_logging();
    py::register(m)
}
