//! One error type for the core, and its single conversion into the Python exception hierarchy.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core. No variant ever carries token bytes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid task token: {0}")]
    Token(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no execution with id {0:?}")]
    ExecutionNotFound(String),
    #[error("execution {id:?} is {phase}, {why}")]
    InvalidState { id: String, phase: &'static str, why: String },
    #[error("store error: {0}")]
    Store(String),
    /// The store's server could not be reached, or the connection was lost mid-operation (nothing of
    /// that operation was committed, unless it says otherwise; settling again is safe).
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("store refused the credentials: {0}")]
    StoreAuth(String),
    /// The database was migrated by another version of stigmer-handshake, or changed by hand.
    #[error("store schema mismatch: {0}")]
    SchemaMismatch(String),
    /// A stored token cannot be opened (no such key, or the wrong one); the callback stays due.
    #[error("token key: {0}")]
    TokenKey(String),
    /// A settle capability was refused (forged, expired, another execution, an outcome not granted).
    #[error("capability refused: {0}")]
    Capability(String),
    /// The token belongs to a namespace this handshake does not serve; nothing was sent.
    #[error("{0}")]
    Namespace(String),
    #[error("could not connect to Temporal at {target}: {message}")]
    Connect { target: String, message: String },
    /// The server no longer knows the activity attempt: it completed, timed out, was retried or its
    /// workflow closed. Expected in long runs, so it is its own class.
    #[error("the parent activity is gone ({message})")]
    ActivityGone { message: String },
    #[error("Temporal rejected the call: {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("timed out after {0:.3}s waiting for execution to end")]
    WaitTimeout(f64),
    #[error("this handshake object was created in process {created} and cannot be used after fork (in {current}); connect again in the child")]
    Forked { created: u32, current: u32 },
}

impl Error {
    /// Temporal could not be reached (or is restarting): waiting and trying again may mend it.
    pub fn is_unreachable(&self) -> bool {
        use tonic::Code;
        match self {
            Error::Connect { .. } => true,
            Error::Rpc { code, .. } => matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown),
            _ => false,
        }
    }

    /// The Python exception class this error is raised as (also the `type` label of the error metric).
    pub fn type_name(&self) -> &'static str {
        match self {
            Error::Token(_) => "TokenError",
            Error::InvalidArgument(_) => "InvalidInput",
            Error::ExecutionNotFound(_) => "ExecutionNotFound",
            Error::InvalidState { .. } => "InvalidState",
            Error::Store(_) => "StoreError",
            Error::StoreUnavailable(_) => "StoreUnavailable",
            Error::StoreAuth(_) => "StoreAuthError",
            Error::SchemaMismatch(_) => "SchemaMismatch",
            Error::TokenKey(_) => "TokenKeyError",
            Error::Capability(_) => "CapabilityError",
            Error::Namespace(_) => "NamespaceMismatch",
            Error::Connect { .. } => "ConnectError",
            Error::ActivityGone { .. } => "ActivityGone",
            Error::Rpc { .. } => "TemporalRpcError",
            Error::WaitTimeout(_) => "WaitTimeout",
            Error::Forked { .. } => "HandshakeError",
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let text = e.to_string();
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Error::StoreUnavailable(text),
            sqlx::Error::Configuration(_) => Error::InvalidArgument(format!("bad store URL: {text}")),
            // PostgreSQL's SQLSTATE classes: 28 refused credentials, 08 connection failures, 57P0x the
            // server shutting down or starting (a restart). SQLite's are above.
            // SQLite's busy and locked (primary codes 5 and 6, extended ones too): another process held the
            // lock past the busy timeout; nothing was written, trying again may work.
            sqlx::Error::Database(db) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
                match db.code().and_then(|code| code.parse::<i32>().ok()).map(|code| code & 0xff) {
                    Some(5 | 6) => Error::StoreUnavailable(text),
                    _ => Error::Store(text),
                }
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(code) if code.starts_with("28") => Error::StoreAuth(text),
                Some(code) if code.starts_with("08") || code.starts_with("57P0") => Error::StoreUnavailable(text),
                _ => Error::Store(text),
            },
            _ => Error::Store(text),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Store(format!("schema migration failed: {e}"))
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::InvalidArgument(format!("malformed protobuf bytes: {e}"))
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // The server's messages name the problem ("Task token not set", "workflow execution already
        // completed") and never echo the token back.
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => Error::ActivityGone { message },
            code => Error::Rpc { code, message },
        }
    }
}

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
