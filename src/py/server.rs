//! `stigmer_handshake._core.Server`: the Python face of `server::Server`, started by `Core.serve` from a
//! `stigmer_handshake.server.ServeSettings` dataclass (read by attribute, as `ConnectSettings` is).

use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors::Error;
use crate::py::asyncio::spawn;
use crate::server::auth::{parse_keys, ApiKey, Scope};
use crate::server::{ServeSettings, Server, ServerTls};

/// The dataclass's fields, by attribute; PEM files already read.
#[derive(FromPyObject)]
pub struct PyServeSettings {
    listen: String,
    api_keys: Option<Vec<PyApiKey>>,
    insecure_localhost: bool,
    tls_cert: Option<Vec<u8>>,
    tls_key: Option<Vec<u8>>,
    tls_client_ca: Option<Vec<u8>>,
    public_url: Option<String>,
    temporal_ui: Option<String>,
}

/// `stigmer_handshake.server.ApiKey`, by attribute.
#[derive(FromPyObject)]
pub struct PyApiKey {
    name: String,
    secret: String,
    scopes: Vec<String>,
}

impl TryFrom<PyServeSettings> for ServeSettings {
    type Error = Error;

    fn try_from(py: PyServeSettings) -> crate::errors::Result<Self> {
        let api_keys = py
            .api_keys
            .map(|keys| {
                keys.into_iter()
                    .map(|k| {
                        let scopes = k.scopes.iter().map(|s| Scope::parse(s)).collect::<crate::errors::Result<_>>()?;
                        Ok(ApiKey { name: k.name, secret: k.secret, scopes })
                    })
                    .collect::<crate::errors::Result<Vec<_>>>()
            })
            .transpose()?;
        let tls = match (py.tls_cert, py.tls_key) {
            (Some(cert_pem), Some(key_pem)) => Some(ServerTls { cert_pem, key_pem, client_ca_pem: py.tls_client_ca }),
            (None, None) if py.tls_client_ca.is_none() => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "TLS needs both tls_cert and tls_key (tls_client_ca only with them)".into(),
                ))
            }
        };
        Ok(ServeSettings {
            listen: py.listen,
            api_keys,
            insecure_localhost: py.insecure_localhost,
            tls,
            public_url: py.public_url,
            temporal_ui: py.temporal_ui,
        })
    }
}

/// A running server. `close()` (awaitable) stops it gracefully.
#[pyclass(name = "Server", module = "stigmer_handshake._core", frozen)]
pub struct PyServer(pub Arc<Server>);

#[pymethods]
impl PyServer {
    /// The address it listens on, `host:port` (the port chosen when 0 was asked).
    #[getter]
    fn address(&self) -> String {
        self.0.address().to_string()
    }

    /// The base URL callers reach it at.
    #[getter]
    fn url(&self) -> String {
        self.0.url().to_owned()
    }

    /// Stop accepting, let requests in flight finish, then return. Awaitable; a second close returns at once.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let server = self.0.clone();
        spawn(py, async move {
            server.close().await;
            Ok(())
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Server(url={})", crate::py::types::py_repr(py, self.0.url()))
    }
}

/// API keys from the text of a keys file: `(name, secret, scopes)` per key (see `server::auth::parse_keys`).
#[pyfunction]
pub fn parse_api_keys(text: &str) -> PyResult<Vec<(String, String, Vec<String>)>> {
    Ok(parse_keys(text)?
        .into_iter()
        .map(|k| (k.name, k.secret, k.scopes.iter().map(|s| s.as_str().to_owned()).collect()))
        .collect())
}
