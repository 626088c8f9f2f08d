//! Where and how to reach Temporal: the address, TLS (server CA, SNI domain, client certificate), the API
//! key and extra gRPC metadata; and why a connection was refused, said so that the cause is named. Keys
//! never reach a log, an error or a `Debug` string.

use std::collections::HashMap;
use std::time::Duration;

use temporalio_client::{ClientTlsOptions, ConnectionOptions, GrpcCompression, TlsOptions};

use crate::errors::{Error, Result};

/// How long to wait for the TCP (and TLS) connection before giving up with a typed error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS to Temporal, as temporalio's `TLSConfig` says it (PEM bytes).
#[derive(Clone, Default)]
pub struct Tls {
    /// None: the system's trusted roots.
    pub server_root_ca_cert: Option<Vec<u8>>,
    /// The name the server's certificate is checked against (and sent as SNI); None: the address's host.
    pub domain: Option<String>,
    /// A client certificate and its key, for mTLS (both or neither).
    pub client_cert: Option<Vec<u8>>,
    pub client_private_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_root_ca_cert", &self.server_root_ca_cert.is_some())
            .field("domain", &self.domain)
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// Where Temporal is and how to talk to it.
#[derive(Clone)]
pub struct Endpoint {
    /// `http://host:port`, or `https://host:port` (TLS with the system's roots unless `tls` says more).
    pub target: String,
    /// Some: TLS, whatever the URL's scheme says.
    pub tls: Option<Tls>,
    /// Sent as `authorization: Bearer <key>` on every call.
    pub api_key: Option<String>,
    /// Extra gRPC metadata on every call (ASCII keys and values).
    pub metadata: Vec<(String, String)>,
}

impl Endpoint {
    /// A plain endpoint at `target`.
    pub fn plain(target: &str) -> Self {
        Self { target: target.to_owned(), tls: None, api_key: None, metadata: Vec::new() }
    }

    /// Check the address, the TLS pair and the metadata now (before anything is dialled).
    pub fn check(&self) -> Result<()> {
        parse_target(&self.target)?;
        if let Some(tls) = &self.tls {
            if tls.client_cert.is_some() != tls.client_private_key.is_some() {
                return Err(Error::InvalidArgument(
                    "tls: client_cert and client_private_key go together (mTLS needs both)".into(),
                ));
            }
        }
        if let Some(key) = &self.api_key {
            check_api_key(key)?;
        }
        for (key, value) in &self.metadata {
            let valid_key = !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid_key || key.ends_with("-bin") || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(Error::InvalidArgument(format!(
                    "rpc_metadata {key:?}: keys must be lowercase ASCII (letters, digits, - _ .; not -bin) and \
                     values printable ASCII"
                )));
            }
        }
        Ok(())
    }

    /// temporalio-client's options for this endpoint, with `api_key` (the current one: it rotates).
    pub fn options(&self, identity: &str, api_key: Option<String>) -> Result<ConnectionOptions> {
        let mut url = parse_target(&self.target)?;
        let tls = match (&self.tls, url.scheme()) {
            (Some(tls), _) => Some(tls.clone()),
            (None, "https") => Some(Tls::default()),
            (None, _) => None,
        };
        if tls.is_some() && url.scheme() == "http" {
            // Only the scheme changes: http and https URLs always accept each other's scheme.
            let _ = url.set_scheme("https");
        }
        let tls_options = tls.map(|tls| {
            let mut options = TlsOptions::default();
            options.server_root_ca_cert = tls.server_root_ca_cert;
            options.domain = tls.domain;
            options.client_tls_options = tls
                .client_cert
                .zip(tls.client_private_key)
                .map(|(cert, key)| ClientTlsOptions::builder().client_cert(cert).client_private_key(key).build());
            options
        });
        let headers: HashMap<String, String> = self.metadata.iter().cloned().collect();
        Ok(ConnectionOptions::new(url)
            .identity(identity.to_owned())
            // Uncompressed: a settle or heartbeat is a few hundred bytes, which gzip makes no smaller and
            // costs both client and server CPU (`make bench`'s B4); large results are the data converter's
            // to compress (a payload codec), as Temporal advises.
            .grpc_compression(GrpcCompression::None)
            .connect_timeout(CONNECT_TIMEOUT)
            .maybe_tls_options(tls_options)
            .maybe_api_key(api_key)
            .maybe_headers((!headers.is_empty()).then_some(headers))
            .build())
    }

    /// The address as errors and logs show it.
    pub fn shown(&self) -> String {
        redacted(&self.target)
    }
}

/// An API key must fit an HTTP header value (it travels as `authorization: Bearer <key>`).
pub fn check_api_key(key: &str) -> Result<()> {
    if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(Error::InvalidArgument("api_key must be non-empty printable ASCII without spaces".into()));
    }
    Ok(())
}

/// Why connecting failed, by the cause: Temporal not answering (worth waiting for) or refusing this
/// client's TLS or credentials (not: it fails at connect, with a message naming the setting to fix).
pub fn connect_error(endpoint: &Endpoint, message: &str) -> Error {
    let target = endpoint.shown();
    let refused = |why: &str| Error::ConnectRefused { target: target.clone(), message: format!("{why} ({message})") };
    if message.contains("UnknownIssuer") || message.contains("unknown issuer") || message.contains("BadSignature") {
        return refused(
            "the server's certificate is not signed by a trusted CA: set tls.server_root_ca_cert to its CA",
        );
    }
    if message.contains("NotValidForName") || message.contains("not valid for name") {
        return refused(
            "the server's certificate is not valid for the name connected to: set tls.domain to a name it has",
        );
    }
    if message.contains("CertificateRequired") || message.contains("certificate required") {
        return refused("the server requires a client certificate: set tls.client_cert and tls.client_private_key");
    }
    if message.contains("InvalidContentType") || message.contains("CorruptMessage") {
        return refused("the server does not speak TLS at this address: use http:// or no tls");
    }
    Error::Connect { target, message: message.to_owned() }
}

/// An RPC refused at connect, by its cause: credentials and certificates are named, anything else is
/// Temporal's own answer.
pub fn refused_call(endpoint: &Endpoint, status: &tonic::Status) -> Option<Error> {
    let target = endpoint.shown();
    let why = match crate::errors::grpc_code(status) {
        tonic::Code::Unauthenticated => "the server refused the credentials: the API key is wrong, expired or missing",
        tonic::Code::PermissionDenied => "the server refused this client: its API key or certificate lacks permission",
        // A TLS front (nginx, a load balancer) that wants a client certificate answers HTTP 400.
        tonic::Code::Internal if status.message().contains("with status: 400") => {
            "the server refused the request (HTTP 400): it may require a client certificate that was not sent or \
             not accepted (tls.client_cert)"
        }
        _ => return None,
    };
    Some(Error::ConnectRefused { target, message: format!("{why} ({:?}: {})", status.code(), status.message()) })
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    fn refused(code: tonic::Code, message: &str) -> Option<String> {
        refused_call(&Endpoint::plain("https://t:1"), &tonic::Status::new(code, message)).map(|e| e.to_string())
    }

    #[test]
    fn a_refusal_at_connect_names_its_cause_and_others_are_temporals_own() {
        let http = |status| format!("protocol error: bad flag while receiving response with status: {status}");
        assert!(refused(tonic::Code::Unauthenticated, "bad key").unwrap().contains("API key"));
        assert!(refused(tonic::Code::Internal, &http("401 Unauthorized")).unwrap().contains("API key"));
        assert!(refused(tonic::Code::Internal, &http("403 Forbidden")).unwrap().contains("lacks permission"));
        assert!(refused(tonic::Code::Internal, &http("400 Bad Request")).unwrap().contains("client certificate"));
        assert_eq!(refused(tonic::Code::Internal, "boom"), None);
        assert_eq!(refused(tonic::Code::Unavailable, "down"), None);
        let tls = |message| connect_error(&Endpoint::plain("https://t:1"), message);
        assert!(matches!(tls("invalid peer certificate: UnknownIssuer"), Error::ConnectRefused { .. }));
        assert!(matches!(tls("invalid peer certificate: NotValidForName"), Error::ConnectRefused { .. }));
        assert!(matches!(tls("tcp connect error: Connection refused"), Error::Connect { .. }));
    }
}

pub fn parse_target(target: &str) -> Result<url::Url> {
    let shown = redacted(target);
    let url = url::Url::parse(target).map_err(|e| {
        Error::InvalidArgument(format!("the Temporal address {shown:?} is not a URL ({e}); use http://host:port"))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::InvalidArgument(format!(
            "the Temporal address {shown:?} must look like http://host:port (or https://)"
        )));
    }
    Ok(url)
}

/// `target` as errors and logs may show it: credentials in it (`http://user:secret@host`) become `***`.
pub fn redacted(target: &str) -> String {
    match url::Url::parse(target) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            // Only URLs that can have credentials get here, so these cannot fail.
            let _ = url.set_username("***");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => target.to_owned(),
        // Not a URL: whatever stands before an `@` may still be a secret.
        Err(_) => target.rfind('@').map_or_else(|| target.to_owned(), |at| format!("***@{}", &target[at + 1..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_address_are_never_shown() {
        assert_eq!(redacted("http://user:secret@host:7233"), "http://***@host:7233/");
        assert_eq!(redacted("http://token@host:7233/"), "http://***@host:7233/");
        assert_eq!(redacted("http://host:7233"), "http://host:7233");
        assert_eq!(redacted("http//user:secret@host"), "***@host");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
