//! One error type for the core. Its faces convert it once each (Python: `py/errors.rs`).

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
    /// Temporal answered but refused this client: its TLS settings or credentials. Waiting cannot mend it.
    #[error("Temporal at {target} refused this client: {message}")]
    ConnectRefused { target: String, message: String },
    /// The server no longer knows the activity attempt: it completed, timed out, was retried or its
    /// workflow closed. Expected in long runs, so it is its own class.
    #[error("the parent activity is gone ({message})")]
    ActivityGone { message: String },
    #[error("Temporal rejected the call: {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("timed out after {0:.3}s waiting for execution to end")]
    WaitTimeout(f64),
    #[error("this handshake is closed; connect again")]
    Closed,
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

    /// The same error, its message prefixed with where it happened (`what`: "PostgreSQL at host:port").
    #[must_use]
    pub fn naming(self, what: &str) -> Self {
        match self {
            Error::StoreUnavailable(m) => Error::StoreUnavailable(format!("{what}: {m}")),
            Error::StoreAuth(m) => Error::StoreAuth(format!("{what}: {m}")),
            Error::Store(m) => Error::Store(format!("{what}: {m}")),
            other => other,
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
            Error::Connect { .. } | Error::ConnectRefused { .. } => "ConnectError",
            Error::ActivityGone { .. } => "ActivityGone",
            Error::Rpc { .. } => "TemporalRpcError",
            Error::WaitTimeout(_) => "WaitTimeout",
            Error::Closed => "HandshakeClosed",
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

/// The gRPC code of `status`, also when a proxy in front of Temporal (nginx, a load balancer) answered
/// with a plain HTTP error, which tonic reports as `Internal` naming the HTTP status: mapped as the gRPC
/// spec's HTTP-to-gRPC table says (401 Unauthenticated, 403 PermissionDenied, 429/502/503/504 Unavailable).
pub fn grpc_code(status: &tonic::Status) -> tonic::Code {
    use tonic::Code;
    if status.code() != Code::Internal {
        return status.code();
    }
    let http = status.message().rsplit_once("with status: ").map(|(_, rest)| rest.get(..3).unwrap_or(rest));
    match http {
        Some("401") => Code::Unauthenticated,
        Some("403") => Code::PermissionDenied,
        Some("404") => Code::Unimplemented,
        Some("429" | "502" | "503" | "504") => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // The server's messages name the problem ("Task token not set", "workflow execution already
        // completed") and never echo the token back.
        let message = status.message().to_owned();
        match grpc_code(&status) {
            tonic::Code::NotFound => Error::ActivityGone { message },
            code => Error::Rpc { code, message },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Error;

    /// One error of each variant: the match fails to compile when a variant is added and not listed.
    pub(crate) fn one_of_each() -> Vec<Error> {
        let text = String::new;
        let all = vec![
            Error::Token(text()),
            Error::InvalidArgument(text()),
            Error::ExecutionNotFound(text()),
            Error::InvalidState { id: text(), phase: "FAILED", why: text() },
            Error::Store(text()),
            Error::StoreUnavailable(text()),
            Error::StoreAuth(text()),
            Error::SchemaMismatch(text()),
            Error::TokenKey(text()),
            Error::Capability(text()),
            Error::Namespace(text()),
            Error::Connect { target: text(), message: text() },
            Error::ConnectRefused { target: text(), message: text() },
            Error::ActivityGone { message: text() },
            Error::Rpc { code: tonic::Code::Internal, message: text() },
            Error::WaitTimeout(1.0),
            Error::Closed,
            Error::Forked { created: 1, current: 2 },
        ];
        for err in &all {
            match err {
                Error::Token(_)
                | Error::InvalidArgument(_)
                | Error::ExecutionNotFound(_)
                | Error::InvalidState { .. }
                | Error::Store(_)
                | Error::StoreUnavailable(_)
                | Error::StoreAuth(_)
                | Error::SchemaMismatch(_)
                | Error::TokenKey(_)
                | Error::Capability(_)
                | Error::Namespace(_)
                | Error::Connect { .. }
                | Error::ConnectRefused { .. }
                | Error::ActivityGone { .. }
                | Error::Rpc { .. }
                | Error::WaitTimeout(_)
                | Error::Closed
                | Error::Forked { .. } => {}
            }
        }
        all
    }
}
