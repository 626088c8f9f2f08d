//! The console: pages for the people who watch and settle the work, served at `/` from files built into
//! the package (no CDN, no build step, works offline). The pages call the HTTP API (`/v1/...`) with the
//! session cookie, and these few endpoints of their own:
//!
//! - `GET /console/session` (who is signed in, and the CSRF token), `POST /console/login` (`{"key"}`),
//!   `POST /console/logout`;
//! - `GET /console/overview`: what waits by age, deliveries in trouble, settles per minute, counts;
//! - `GET /console/events`: server-sent `change` events whenever the store changes;
//! - `GET /console/parent/{id}`: the parent activity as its workflow shows it (heartbeat details).
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles only from these files, no
//! inline code, nothing framed, no referrer (a callback URL carries its capability).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{Refusal, Scope};
use super::codes::{http_error, http_refusal, http_status};
use super::session::{self, refused};
use super::shared::Shared;
use crate::errors::{Error, Result};

const INDEX: &str = include_str!("console/index.html");
const APPROVE: &str = include_str!("console/approve.html");
const SCRIPT: &str = include_str!("console/console.js");
const APPROVE_SCRIPT: &str = include_str!("console/approve.js");
const STYLE: &str = include_str!("console/console.css");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// How often the events stream looks for a change (a few index reads each time).
const CHANGE_POLL: Duration = Duration::from_millis(500);
/// How long the parent's page waits for Temporal to describe the parent workflow.
const PARENT_PATIENCE: Duration = Duration::from_secs(5);
/// Deliveries in trouble the overview lists at most.
const TROUBLED_SHOWN: i64 = 50;

pub fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/", get(async || page(INDEX)))
        .route("/console/console.js", get(async || asset("text/javascript", SCRIPT)))
        .route("/console/approve.js", get(async || asset("text/javascript", APPROVE_SCRIPT)))
        .route("/console/console.css", get(async || asset("text/css", STYLE)))
        .route("/console/session", get(whoami))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/overview", get(overview))
        .route("/console/events", get(events))
        .route("/console/parent/{id}", get(parent))
}

/// Headers every answer of the HTTP face carries (pages, assets and JSON alike).
pub async fn secure_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn page(html: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Whether a browser is asking for a page (a callback URL opened in a browser) rather than JSON.
pub fn wants_page(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

pub fn approval_page() -> Response {
    page(APPROVE)
}

fn session_json(shared: &Shared, session: &session::Session) -> Value {
    json!({
        "signed_in": true,
        "name": session.name,
        "scopes": session.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "csrf_token": session.csrf,
        "expires_ms": session.expires_ms,
        "temporal_ui": shared.temporal_ui,
    })
}

/// Who is signed in (`signed_in: false`: nobody, the page asks for a key). A server without keys
/// (`--insecure-localhost`) signs everyone in at once.
async fn whoami(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(session) = session::from_headers(&shared, &headers) {
        return Json(session_json(&shared, &session)).into_response();
    }
    if shared.keys.open() {
        return signed_in(&shared, "");
    }
    Json(json!({"signed_in": false})).into_response()
}

async fn login(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if session::cross_origin(&headers) {
        return http_refusal(Refusal::PermissionDenied("a sign-in from a page of another origin is refused".into()))
            .into_response();
    }
    let key = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["key"].as_str().map(str::to_owned));
    let Some(key) = key else {
        return http_status(&Error::InvalidArgument("sign in with {\"key\": \"<API key>\"}".into())).into_response();
    };
    signed_in(&shared, key.trim())
}

/// Answer a sign-in with `key`: the session cookie and who it is, or a refusal that sets nothing.
fn signed_in(shared: &Shared, key: &str) -> Response {
    let Some((name, scopes, tag)) = shared.keys.find(key) else {
        tracing::info!("console sign-in refused");
        return http_refusal(Refusal::Unauthenticated("the API key is not valid".into())).into_response();
    };
    tracing::info!(key = %name, "console sign-in");
    let (cookie, session) = session::issue(shared, &name, scopes, &tag);
    let set = session::set_cookie(shared, &cookie, session::SESSION_TTL_MS / 1000);
    ([(header::SET_COOKIE, set)], Json(session_json(shared, &session))).into_response()
}

async fn logout(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::SET_COOKIE, session::set_cookie(&shared, "", 0))], Json(json!({"signed_out": true}))).into_response()
}

async fn overview(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    match overview_json(&shared).await {
        Ok(value) => Json(value).into_response(),
        Err(err) => http_status(&err).into_response(),
    }
}

async fn overview_json(shared: &Shared) -> Result<Value> {
    let bounds: Vec<i64> = crate::metrics::PENDING_AGES.iter().map(|(_, lower)| *lower).collect();
    let pending = shared.core.store().pending_by_age(&bounds).await?;
    let overview = shared.core.overview(TROUBLED_SHOWN).await?;
    let now_minute = crate::clock::now_ms() / 60_000;
    // One count per minute of the last hour, oldest first, zeros included: what the chart draws.
    let per_minute: Vec<Value> = (now_minute - 59..=now_minute)
        .map(|minute| {
            let count = overview.settles_per_minute.iter().find(|(m, _)| *m == minute).map_or(0, |(_, n)| *n);
            json!({"minute_ms": minute * 60_000, "count": count})
        })
        .collect();
    Ok(json!({
        "pending_by_age": crate::metrics::PENDING_AGES.iter().zip(pending)
            .map(|((age, _), count)| json!({"age": age, "count": count})).collect::<Vec<_>>(),
        "counts": overview.counts.iter()
            .map(|(kind, phase, count)| json!({"kind": kind.as_str(), "phase": phase.name(), "count": count}))
            .collect::<Vec<_>>(),
        "troubled": overview.troubled.iter().map(|t| json!({
            "execution_id": t.execution_id,
            "state": t.state.as_str(),
            "delivery_attempts": t.attempts,
            "last_error": t.last_error,
            "next_attempt_ms": (t.next_attempt_ms > 0).then_some(t.next_attempt_ms),
        })).collect::<Vec<_>>(),
        "settles_per_minute": per_minute,
    }))
}

/// `change` events (the store's change marker) whenever an execution or callback is written; the page
/// reloads what it shows. Ends when the server stops.
async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::result::Result<Event, std::convert::Infallible>>(4);
    let mut stopping = shared.stopping.clone();
    tokio::spawn(async move {
        let mut seen = String::new();
        loop {
            match shared.core.last_change().await {
                Ok(marker) if marker != seen => {
                    if sender.send(Ok(Event::default().event("change").data(&marker))).await.is_err() {
                        return;
                    }
                    seen = marker;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "the console's change watch could not read the store"),
            }
            tokio::select! {
                () = tokio::time::sleep(CHANGE_POLL) => {}
                () = super::shared::stopped(&mut stopping) => return,
                () = sender.closed() => return,
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()).into_response()
}

/// The parent activity of `id` as its workflow shows it: state, attempt, heartbeat details and time.
async fn parent(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    let answer = async {
        crate::core::check_execution_id(&id)?;
        let record = shared.core.get(&id, false).await?;
        let Some(callback) = record.callback else {
            return Err(Error::InvalidState { id, phase: "direct", why: "no parent activity waits on it".into() });
        };
        let temporal = shared.core.temporal().await?;
        let asked = temporal.pending_activity(&callback.workflow_id, &callback.run_id, &callback.activity_id);
        let pending = tokio::time::timeout(PARENT_PATIENCE, asked).await.map_err(|_| Error::Connect {
            target: "Temporal".into(),
            message: format!("no answer within {} s", PARENT_PATIENCE.as_secs()),
        })??;
        Ok(json!({
            "namespace": temporal.namespace(),
            "pending": pending.map(|p| json!({
                "state": p.state,
                "attempt": p.attempt,
                "paused": p.paused,
                "last_heartbeat_ms": p.last_heartbeat_ms,
                "heartbeat_details": p.heartbeat_details.as_deref().map(crate::payload::payloads_json),
            })),
        }))
    };
    match answer.await {
        Ok(value) => Json(value).into_response(),
        Err(err @ Error::Connect { .. }) => {
            http_error(StatusCode::SERVICE_UNAVAILABLE, "TemporalUnavailable", &err.to_string()).into_response()
        }
        Err(err) => http_status(&err).into_response(),
    }
}
