//! Who a browser is: a person signs in to the console once with an API key, and gets a session cookie
//! (HttpOnly, SameSite=Strict, Secure under https) naming that key, signed with the store's key so any
//! server of the store accepts it. Every request that changes something must also carry the session's
//! CSRF token (derived from the cookie) in `x-csrf-token`, and nothing that changes state is accepted
//! from a page of another origin, whatever credentials ride along.

use axum::http::HeaderMap;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::auth::{allows, Refusal, Scope};
use super::shared::Shared;

pub const COOKIE: &str = "stigmer_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a sign-in lasts.
pub const SESSION_TTL_MS: i64 = 8 * 3_600_000;
const SESSION_PURPOSE: &str = "console-session";
const CSRF_PURPOSE: &str = "console-csrf";

/// A signed-in browser.
pub struct Session {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub csrf: String,
    pub expires_ms: i64,
}

/// A new session for key `name` (whose secret has `tag`): the cookie's value and the session.
pub fn issue(shared: &Shared, name: &str, scopes: Vec<Scope>, tag: &str) -> (String, Session) {
    let expires_ms = crate::clock::now_ms() + SESSION_TTL_MS;
    let body = hex::encode(json!({"n": name, "t": tag, "x": expires_ms}).to_string());
    let cookie = format!("{body}.{}", shared.core.sign(SESSION_PURPOSE, &body));
    let csrf = csrf_of(shared, &cookie);
    (cookie, Session { name: name.to_owned(), scopes, csrf, expires_ms })
}

fn csrf_of(shared: &Shared, cookie: &str) -> String {
    shared.core.sign(CSRF_PURPOSE, cookie)[..32].to_owned()
}

/// The session the request's cookie holds, if it is signed, unexpired and its key still stands.
pub fn from_headers(shared: &Shared, headers: &HeaderMap) -> Option<Session> {
    let cookie = cookie_value(headers)?;
    let (body, signature) = cookie.split_once('.')?;
    if !shared.core.signed(SESSION_PURPOSE, body, signature) {
        return None;
    }
    let fields: serde_json::Value = serde_json::from_slice(&hex::decode(body).ok()?).ok()?;
    let (name, tag, expires_ms) = (fields["n"].as_str()?, fields["t"].as_str()?, fields["x"].as_i64()?);
    if crate::clock::now_ms() >= expires_ms {
        return None;
    }
    let scopes = shared.keys.scopes_of(name, tag)?;
    Some(Session { name: name.to_owned(), scopes, csrf: csrf_of(shared, cookie), expires_ms })
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `set-cookie` value that stores `value` (empty with `max_age_s` 0: signs out).
pub fn set_cookie(shared: &Shared, value: &str, max_age_s: i64) -> String {
    let secure = if shared.base_url.starts_with("https://") { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}")
}

/// Whether a browser sent this request from a page of another origin (a form or script elsewhere):
/// its `sec-fetch-site` says so, or its `origin` names another host than the one it was sent to.
pub fn cross_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return true;
    }
    match header("origin") {
        None => false,
        Some(origin) => {
            let host = url::Url::parse(origin).ok().and_then(|url| {
                url.host_str().map(|h| url.port().map_or_else(|| h.to_owned(), |port| format!("{h}:{port}")))
            });
            host.is_none() || host.as_deref() != header("host")
        }
    }
}

/// The HTTP refusal to answer with, when the request's key or session does not allow `scope`.
pub fn refused(shared: &Shared, headers: &HeaderMap, scope: Scope) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    check(shared, headers, scope).err().map(|refusal| super::codes::http_refusal(refusal).into_response())
}

/// Who may do what `scope` allows: an API key in `authorization`, or else the console's session (with
/// its CSRF token unless `scope` only reads). Nothing but a read is taken from another origin.
pub fn check(shared: &Shared, headers: &HeaderMap, scope: Scope) -> Result<String, Refusal> {
    if scope != Scope::Read && cross_origin(headers) {
        return Err(Refusal::PermissionDenied("a request from a page of another origin is refused".into()));
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if authorization.is_some() || shared.keys.open() || cookie_value(headers).is_none() {
        return shared.keys.check(authorization, scope);
    }
    let session = from_headers(shared, headers)
        .ok_or_else(|| Refusal::Unauthenticated("the console session has expired or is not valid: sign in".into()))?;
    if scope != Scope::Read {
        let sent = headers.get(CSRF_HEADER).map_or(&b""[..], |v| v.as_bytes());
        if !bool::from(sent.ct_eq(session.csrf.as_bytes())) {
            return Err(Refusal::PermissionDenied(format!("a console action needs the {CSRF_HEADER} header")));
        }
    }
    allows(&session.name, &session.scopes, scope).map(|()| session.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Core, Settings};
    use crate::server::auth::{parse_keys, Keys};

    async fn shared(folder: &std::path::Path, keys: &str) -> Shared {
        let settings = Settings {
            store: format!("sqlite://{}", folder.join("s.db").display()),
            temporal: None,
            ..Settings::default()
        };
        let core = std::sync::Arc::new(Core::connect(settings).await.unwrap());
        let keys = Keys::new(Some(parse_keys(keys).unwrap())).unwrap();
        let (_, stopping) = tokio::sync::watch::channel(false);
        Shared { core, keys, base_url: "http://127.0.0.1:1".into(), temporal_ui: None, stopping }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    const KEYS: &str = "ops settle,read ops-secret-0123456789\nviewer read viewer-secret-0123456789\n";

    #[tokio::test]
    async fn a_session_reads_with_its_cookie_and_acts_only_with_its_csrf_token() {
        let folder = tempfile::tempdir().unwrap();
        let shared = shared(folder.path(), KEYS).await;
        let (name, scopes, tag) = shared.keys.find("ops-secret-0123456789").unwrap();
        let (cookie, session) = issue(&shared, &name, scopes, &tag);
        let cookie = format!("theme=dark; {COOKIE}={cookie}");
        let host = ("host", "127.0.0.1:1");
        assert_eq!(check(&shared, &headers(&[("cookie", &cookie), host]), Scope::Read), Ok("ops".into()));
        let no_csrf = check(&shared, &headers(&[("cookie", &cookie), host]), Scope::Settle);
        assert!(matches!(no_csrf, Err(Refusal::PermissionDenied(_))), "{no_csrf:?}");
        let wrong = headers(&[("cookie", &cookie), (CSRF_HEADER, &session.csrf[..31]), host]);
        assert!(matches!(check(&shared, &wrong, Scope::Settle), Err(Refusal::PermissionDenied(_))));
        let right = headers(&[("cookie", &cookie), (CSRF_HEADER, &session.csrf), host]);
        assert_eq!(check(&shared, &right, Scope::Settle), Ok("ops".into()));
        assert!(matches!(check(&shared, &right, Scope::Admin), Err(Refusal::PermissionDenied(_))), "its scopes only");
        // From a page of another origin: refused, whatever it carries.
        for foreign in [("origin", "http://127.0.0.1:2"), ("sec-fetch-site", "same-site"), ("origin", "null")] {
            let sent = headers(&[("cookie", &cookie), (CSRF_HEADER, &session.csrf), host, foreign]);
            assert!(matches!(check(&shared, &sent, Scope::Settle), Err(Refusal::PermissionDenied(_))), "{foreign:?}");
        }
        let same =
            headers(&[("cookie", &cookie), (CSRF_HEADER, &session.csrf), host, ("origin", "http://127.0.0.1:1")]);
        assert!(check(&shared, &same, Scope::Settle).is_ok());
    }

    #[tokio::test]
    async fn a_forged_expired_or_orphaned_cookie_is_no_session() {
        let folder = tempfile::tempdir().unwrap();
        let shared = shared(folder.path(), KEYS).await;
        let (name, scopes, tag) = shared.keys.find("viewer-secret-0123456789").unwrap();
        let (cookie, _) = issue(&shared, &name, scopes.clone(), &tag);
        let with = |value: &str| headers(&[("cookie", &format!("{COOKIE}={value}"))]);
        assert!(from_headers(&shared, &with(&cookie)).is_some());
        let (body, signature) = cookie.split_once('.').unwrap();
        let admin = hex::encode(json!({"n": "viewer", "t": tag, "x": i64::MAX}).to_string());
        for forged in [format!("{admin}.{signature}"), format!("{body}.00"), body.to_owned(), String::new()] {
            assert!(from_headers(&shared, &with(&forged)).is_none(), "{forged}");
            assert!(matches!(check(&shared, &with(&forged), Scope::Read), Err(Refusal::Unauthenticated(_))));
        }
        let expired = hex::encode(json!({"n": "viewer", "t": tag, "x": 1}).to_string());
        let expired = format!("{expired}.{}", shared.core.sign(SESSION_PURPOSE, &expired));
        assert!(from_headers(&shared, &with(&expired)).is_none(), "expired");
        // The key's secret was replaced: the sessions it opened end.
        let rotated = shared_with(&shared, "viewer read viewer-secret-replaced-0123");
        assert!(from_headers(&rotated, &with(&cookie)).is_none(), "a replaced secret ends its sessions");
        assert!(!set_cookie(&shared, &cookie, 60).contains("Secure"), "http: no Secure flag");
        assert!(set_cookie(&rotated, &cookie, 60).ends_with("; Secure"), "https: Secure");
    }

    /// `shared` with other keys, on the same core (same signing key).
    fn shared_with(shared: &Shared, keys: &str) -> Shared {
        let (_, stopping) = tokio::sync::watch::channel(false);
        Shared {
            core: shared.core.clone(),
            keys: Keys::new(Some(parse_keys(keys).unwrap())).unwrap(),
            base_url: "https://handshake.example".into(),
            temporal_ui: None,
            stopping,
        }
    }
}
