//! `Handshake.connect`'s settings as they cross into Rust: the frozen dataclass
//! `stigmer_handshake._settings.ConnectSettings`, read by attribute into `core::Settings`. Its defaults
//! are `Settings::default()`'s, which the module exports (`DEFAULT_*`) for the dataclass to use.

use pyo3::prelude::*;

use crate::core::Settings;
use crate::errors::{Error, Result};
use crate::py::args::{duration, patience};

/// The dataclass's fields, by attribute; durations in seconds.
#[derive(FromPyObject)]
pub struct ConnectSettings {
    store: String,
    temporal: Option<String>,
    namespaces: Vec<String>,
    identity: Option<String>,
    heartbeat_interval: f64,
    token_keys: Vec<(String, Vec<u8>)>,
    capability_keys: Vec<Vec<u8>>,
    max_result_bytes: i64,
    wait_for_temporal: Option<f64>,
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
            namespaces: py.namespaces,
            identity: py.identity,
            default_heartbeat_interval: duration(py.heartbeat_interval, "heartbeat_interval")?,
            token_keys: py.token_keys,
            capability_keys: py.capability_keys,
            max_result_bytes,
            wait_for_temporal: py.wait_for_temporal.map(|t| patience(t, "wait_for_temporal")).transpose()?,
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
    Ok(())
}
