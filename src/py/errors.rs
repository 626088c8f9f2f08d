//! The Python exception hierarchy, and the single conversion of the core's `Error` into it (which also
//! counts the error metric, by the class raised).

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::errors::Error;

pyo3::create_exception!(
    stigmer_handshake._core,
    HandshakeError,
    PyException,
    "Root of every error stigmer-handshake raises."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    TokenError,
    HandshakeError,
    "The bytes are not a usable Temporal task token."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    InvalidInput,
    HandshakeError,
    "An argument is out of range or malformed."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    StoreError,
    HandshakeError,
    "The execution store failed or refused the operation."
);
pyo3::create_exception!(stigmer_handshake._core, ExecutionNotFound, StoreError, "No execution has the given id.");
pyo3::create_exception!(
    stigmer_handshake._core,
    StoreUnavailable,
    StoreError,
    "The store's server could not be reached or the connection was lost; the operation can be retried."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    StoreAuthError,
    StoreError,
    "The store's server refused the credentials (or the role does not exist)."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    SchemaMismatch,
    StoreError,
    "The store's schema was migrated by a newer version (or changed by hand)."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    InvalidState,
    StoreError,
    "The execution's phase does not allow the operation."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    TokenKeyError,
    StoreError,
    "A stored task token cannot be opened with this process's token keys (missing or wrong key)."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    CapabilityError,
    HandshakeError,
    "A settle capability was refused: forged, expired, for another execution, or an outcome not granted."
);
pyo3::create_exception!(stigmer_handshake._core, DeliveryError, HandshakeError, "Talking to Temporal failed.");
pyo3::create_exception!(
    stigmer_handshake._core,
    NamespaceMismatch,
    DeliveryError,
    "The task token belongs to a namespace this handshake does not serve; nothing was sent."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    ConnectError,
    DeliveryError,
    "The Temporal server could not be reached."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    ActivityGone,
    DeliveryError,
    "The parent activity attempt no longer exists on the server."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    TemporalRpcError,
    DeliveryError,
    "The Temporal server rejected a call; see .code and .message."
);
pyo3::create_exception!(
    stigmer_handshake._core,
    WaitTimeout,
    HandshakeError,
    "wait() ran out of time before the execution ended."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        // Every core error reaches Python through here: count it once, by the class it is raised as.
        crate::metrics::error(err.type_name());
        let text = err.to_string();
        match err {
            Error::Token(_) => TokenError::new_err(text),
            Error::InvalidArgument(_) => InvalidInput::new_err(text),
            Error::ExecutionNotFound(_) => ExecutionNotFound::new_err(text),
            Error::InvalidState { .. } => InvalidState::new_err(text),
            Error::Store(_) => StoreError::new_err(text),
            Error::StoreUnavailable(_) => StoreUnavailable::new_err(text),
            Error::StoreAuth(_) => StoreAuthError::new_err(text),
            Error::SchemaMismatch(_) => SchemaMismatch::new_err(text),
            Error::TokenKey(_) => TokenKeyError::new_err(text),
            Error::Capability(_) => CapabilityError::new_err(text),
            Error::Namespace(_) => NamespaceMismatch::new_err(text),
            Error::Connect { .. } => ConnectError::new_err(text),
            Error::ActivityGone { .. } => ActivityGone::new_err(text),
            Error::Rpc { code, message } => Python::attach(|py| {
                let err = TemporalRpcError::new_err(text);
                // .code and .message mirror temporalio's RPCError, so handlers read the same way.
                let value = err.value(py);
                let attached =
                    value.setattr("code", format!("{code:?}")).and_then(|()| value.setattr("message", message));
                match attached {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }),
            Error::WaitTimeout(_) => WaitTimeout::new_err(text),
            Error::Forked { .. } => HandshakeError::new_err(text),
        }
    }
}
