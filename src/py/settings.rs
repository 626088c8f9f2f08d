//! `Handshake.connect`'s settings as they cross into Rust: the frozen dataclass
//! `stigmer_handshake._settings.ConnectSettings`, read by attribute into `core::Settings`. Its defaults
//! are `Settings::default()`'s, which the module exports (`DEFAULT_*`) for the dataclass to use.

use pyo3::prelude::*;

use crate::core::Settings;
use crate::endpoint::Tls;
use crate::errors::{Error, Result};
use crate::py::args::{duration, patience};

/// The dataclass's fields, by attribute; durations in seconds.
#[derive(FromPyObject)]
pub struct ConnectSettings {
    store: String,
    temporal: Option<String>,
    tls: Option<TlsConfig>,
    api_key: Option<String>,
    rpc_metadata: Vec<(String, String)>,
    namespaces: Vec<String>,
    identity: Option<String>,
    heartbeat_interval: f64,
    token_keys: Vec<(String, Vec<u8>)>,
    capability_keys: Vec<Vec<u8>>,
    max_result_bytes: i64,
    wait_for_temporal: Option<f64>,
    retention: Option<f64>,
}

/// temporalio's `temporalio.service.TLSConfig`, by attribute (the fields the core uses).
#[derive(FromPyObject)]
pub struct TlsConfig {
    server_root_ca_cert: Option<Vec<u8>>,
    domain: Option<String>,
    client_cert: Option<Vec<u8>>,
    client_private_key: Option<Vec<u8>>,
}

impl TryFrom<ConnectSettings> for Settings {
    type Error = Error;

    fn try_from(py: ConnectSettings) -> Result<Self> {
        let max_result_bytes = usize::try_from(py.max_result_bytes).map_err(|_| {
            Error::InvalidArgument(format!("max_result_bytes must be positive, not {}", py.max_result_bytes))
        })?;
        Ok(Settings {
            store: py.store,
            temporal: py.temporal,
            temporal_tls: py.tls.map(|tls| Tls {
                server_root_ca_cert: tls.server_root_ca_cert,
                domain: tls.domain,
                client_cert: tls.client_cert,
                client_private_key: tls.client_private_key,
            }),
            temporal_api_key: py.api_key,
            temporal_metadata: py.rpc_metadata,
            namespaces: py.namespaces,
            identity: py.identity,
            default_heartbeat_interval: duration(py.heartbeat_interval, "heartbeat_interval")?,
            token_keys: py.token_keys,
            capability_keys: py.capability_keys,
            max_result_bytes,
            wait_for_temporal: py.wait_for_temporal.map(|t| patience(t, "wait_for_temporal")).transpose()?,
            retention: py.retention.map(|r| duration(r, "retention")).transpose()?,
        })
    }
}

/// The defaults, for the dataclass.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let defaults = Settings::default();
    m.add("DEFAULT_STORE", defaults.store)?;
    m.add("DEFAULT_TEMPORAL", defaults.temporal)?;
    m.add("DEFAULT_NAMESPACE", defaults.namespaces.first().cloned().unwrap_or_default())?;
    m.add("DEFAULT_HEARTBEAT_INTERVAL", defaults.default_heartbeat_interval.as_secs_f64())?;
    m.add("DEFAULT_MAX_RESULT_BYTES", defaults.max_result_bytes)?;
    // Always set by default (None is only ever asked for).
    m.add("DEFAULT_RETENTION", defaults.retention.map_or(f64::INFINITY, |r| r.as_secs_f64()))?;
    Ok(())
}
