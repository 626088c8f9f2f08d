//! The network face's one conversion of `Error`: to a gRPC status and to an HTTP status with a JSON body
//! (`{"error": {"code", "type", "message"}}`). Messages never carry a token (no `Error` does).

use axum::http::StatusCode;
use tonic::Code;

use super::auth::Refusal;
use crate::errors::Error;

/// The gRPC code and HTTP status an error is answered with.
pub fn codes(error: &Error) -> (Code, StatusCode) {
    match error {
        Error::Token(_) | Error::InvalidArgument(_) | Error::Namespace(_) => {
            (Code::InvalidArgument, StatusCode::BAD_REQUEST)
        }
        Error::ExecutionNotFound(_) => (Code::NotFound, StatusCode::NOT_FOUND),
        Error::InvalidState { .. } => (Code::FailedPrecondition, StatusCode::CONFLICT),
        Error::Capability(_) => (Code::PermissionDenied, StatusCode::FORBIDDEN),
        Error::ActivityGone { .. } => (Code::NotFound, StatusCode::GONE),
        Error::WaitTimeout(_) => (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
        Error::StoreUnavailable(_) | Error::Connect { .. } | Error::Closed => {
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        }
        Error::Rpc { .. } if error.is_unreachable() => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        Error::Rpc { .. } | Error::ConnectRefused { .. } => (Code::Internal, StatusCode::BAD_GATEWAY),
        Error::Store(_)
        | Error::StoreAuth(_)
        | Error::SchemaMismatch(_)
        | Error::TokenKey(_)
        | Error::Forked { .. } => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The gRPC status of an error.
pub fn grpc_status(error: &Error) -> tonic::Status {
    tonic::Status::new(codes(error).0, error.to_string())
}

/// The gRPC status of a refused request.
pub fn grpc_refusal(refusal: Refusal) -> tonic::Status {
    match refusal {
        Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
        Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m),
    }
}

/// An HTTP error answer: its status and JSON body.
pub fn http_error(status: StatusCode, type_name: &str, message: &str) -> (StatusCode, axum::Json<serde_json::Value>) {
    let code = status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_");
    (status, axum::Json(serde_json::json!({"error": {"code": code, "type": type_name, "message": message}})))
}

pub fn http_status(error: &Error) -> (StatusCode, axum::Json<serde_json::Value>) {
    http_error(codes(error).1, error.type_name(), &error.to_string())
}

pub fn http_refusal(refusal: Refusal) -> (StatusCode, axum::Json<serde_json::Value>) {
    match refusal {
        Refusal::Unauthenticated(m) => http_error(StatusCode::UNAUTHORIZED, "Unauthenticated", &m),
        Refusal::PermissionDenied(m) => http_error(StatusCode::FORBIDDEN, "PermissionDenied", &m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_client_or_server_code() {
        for error in crate::errors::tests::one_of_each() {
            let (grpc, http) = codes(&error);
            assert_ne!(grpc, Code::Ok, "{error}");
            assert!(http.is_client_error() || http.is_server_error(), "{error}: {http}");
        }
        assert_eq!(codes(&Error::ExecutionNotFound("x".into())), (Code::NotFound, StatusCode::NOT_FOUND));
    }
}
