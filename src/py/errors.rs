//! The Python exception hierarchy, and the single conversion of the core's `Error` into it (which also
//! counts the error metric, by the class raised).

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::errors::Error;

/// Declares every exception class once, from one table: name, base, docstring. The module registers
/// them from it (`register`), `From<Error>` raises them by `Error::type_name` (`raise_as`), and the tests
/// check that every `type_name`, the stub `_core.pyi` and `__all__` agree with it.
macro_rules! exceptions {
    ($($name:ident($base:ty): $doc:literal,)*) => {
        $(pyo3::create_exception!(stigmer_handshake._core, $name, $base, $doc);)*

        /// The names of the exception classes, in the table's order.
        pub const EXCEPTIONS: &[&str] = &[$(stringify!($name)),*];

        /// Add every exception class to the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }

        /// The exception class `name` names, carrying `text` (a name not in the table: `HandshakeError`).
        fn raise_as(name: &str, text: String) -> PyErr {
            match name {
                $(stringify!($name) => $name::new_err(text),)*
                _ => HandshakeError::new_err(text),
            }
        }
    };
}

exceptions! {
    HandshakeError(PyException): "Root of every error stigmer-handshake raises.",
    TokenError(HandshakeError): "The bytes are not a usable Temporal task token.",
    InvalidInput(HandshakeError): "An argument is out of range or malformed.",
    StoreError(HandshakeError): "The execution store failed or refused the operation.",
    ExecutionNotFound(StoreError): "No execution has the given id.",
    StoreUnavailable(StoreError): "The store's server could not be reached or the connection was lost; the operation can be retried.",
    StoreAuthError(StoreError): "The store's server refused the credentials (or the role does not exist).",
    SchemaMismatch(StoreError): "The store's schema was migrated by a newer version (or changed by hand).",
    InvalidState(StoreError): "The execution's phase does not allow the operation.",
    TokenKeyError(StoreError): "A stored task token cannot be opened with this process's token keys (missing or wrong key).",
    CapabilityError(HandshakeError): "A settle capability was refused: forged, expired, for another execution, or an outcome not granted.",
    DeliveryError(HandshakeError): "Talking to Temporal failed.",
    NamespaceMismatch(DeliveryError): "The task token belongs to a namespace this handshake does not serve; nothing was sent.",
    ConnectError(DeliveryError): "The Temporal server could not be reached.",
    ActivityGone(DeliveryError): "The parent activity attempt no longer exists on the server.",
    TemporalRpcError(DeliveryError): "The Temporal server rejected a call; see .code and .message.",
    HandshakeClosed(HandshakeError): "The handshake was closed (close() or leaving async with); connect again.",
    WaitTimeout(HandshakeError): "wait() ran out of time before the execution ended.",
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        // Every core error reaches Python through here: count it once, by the class it is raised as.
        let class = err.type_name();
        crate::metrics::error(class);
        let text = err.to_string();
        let Error::Rpc { code, message } = err else { return raise_as(class, text) };
        Python::attach(|py| {
            let err = TemporalRpcError::new_err(text);
            // .code and .message mirror temporalio's RPCError, so handlers read the same way.
            let value = err.value(py);
            match value.setattr("code", format!("{code:?}")).and_then(|()| value.setattr("message", message)) {
                Ok(()) => err,
                Err(e) => e,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::EXCEPTIONS;
    use crate::errors::tests::one_of_each;

    #[test]
    fn every_error_is_raised_as_a_class_of_the_table() {
        for err in one_of_each() {
            assert!(EXCEPTIONS.contains(&err.type_name()), "{err:?} names {:?}, not in the table", err.type_name());
        }
    }
}
