//! HTTP/JSON, for webhooks, scripts and people:
//!
//! - `POST /v1/executions/{id}:complete` (body: the result as JSON), `:fail` (`message`, `type`,
//!   `non_retryable`, `details`), `:cancel` (`details`), `:heartbeat` (`details`; answers cancel/pause/reset),
//!   `:redeliver` (a dead-lettered callback), `:callbackUrl` (`outcomes`, `ttl_seconds`; answers `url`),
//!   `GET /v1/executions/{id}`, `GET /v1/executions?kind=&phase=&state=&text=&label=&page_size=&page_token=`:
//!   with an API key, or the console's session (and its CSRF token for a POST);
//! - `GET /v1/callbacks/{capability}` and `POST /v1/callbacks/{capability}:complete|:fail|:cancel`: the
//!   capability in the path is the credential;
//! - `GET /metrics` (read scope), `GET /healthz` (open).
//!
//! Errors answer with a 4xx/5xx status and `{"error": {"code", "type", "message"}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};
use tracing::Instrument;

use super::auth::{Refusal, Scope};
use super::codes::{http_error, http_refusal, http_status};
use super::session::refused;
use super::shared::Shared;
use super::view::{execution_full_json, execution_json};
use crate::delivery::SettleOutcome;
use crate::errors::{Error, Result};
use crate::store::ListFilter;
use crate::vocabulary::{Kind, Outcome};

/// The longest any one HTTP request may take (settles wait for delivery, which Temporal's client retries
/// within this).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn routes(shared: &Arc<Shared>) -> axum::Router {
    let limit = shared.core.max_result_bytes() + 64 * 1024;
    axum::Router::new()
        .route("/healthz", get(async || Json(json!({"status": "serving"}))))
        .route("/metrics", get(metrics))
        .route("/v1/executions", get(list))
        .route("/v1/executions/{target}", get(read).post(act))
        .route("/v1/callbacks/{target}", get(read_by_capability).post(act_by_capability))
        .merge(super::console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(super::console::secure_headers))
        .layer(axum::middleware::from_fn(observe))
        .with_state(shared.clone())
}

/// Count each answer by route and status, in a span; bound each request's time.
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = format!("{} {route}", request.method());
    let span = tracing::info_span!("request", face = "http", method = %method);
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request).instrument(span)).await {
        Ok(response) => response,
        Err(_) => http_error(StatusCode::GATEWAY_TIMEOUT, "Timeout", "the request took too long").into_response(),
    };
    crate::metrics::request("http", &method, response.status().as_str());
    response
}

fn answer(result: Result<Value>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => http_status(&err).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    match shared.core.metrics_text().await {
        Ok(text) => {
            ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
        }
        Err(err) => http_status(&err).into_response(),
    }
}

/// `GET /v1/executions?kind=&phase=&label=key=value&...&page_size=&page_token=` (`label` repeats).
async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    answer(
        async {
            let (mut filter, mut size, mut token, mut labels) = (ListFilter::default(), 0, String::new(), Vec::new());
            for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
                match name.as_ref() {
                    "kind" => filter.kind = Some(Kind::parse(&value)?),
                    "phase" => filter.phase = Some(crate::core::parse_phase(&value)?),
                    "state" => filter.callback_state = Some(value.into_owned()),
                    "text" => filter.text = Some(value.into_owned()),
                    "label" => labels.push(value.into_owned()),
                    "page_size" => {
                        size = value.parse().map_err(|_| Error::InvalidArgument(format!("page_size {value:?}")))?;
                    }
                    "page_token" => token = value.into_owned(),
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown parameter {other:?} (kind, phase, state, text, label, page_size, page_token)"
                        )))
                    }
                }
            }
            filter.labels = super::resource::label_filters(labels.iter().map(String::as_str))?;
            let (records, next) = super::resource::list_page(&shared.core, &filter, size, &token).await?;
            Ok(json!({"executions": records.iter().map(execution_json).collect::<Vec<_>>(), "next_page_token": next}))
        }
        .await,
    )
}

/// `GET /v1/executions/{id}`; `?view=full` adds the status as people read it (messages, tool calls, ...).
async fn read(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if let Some(refusal) = refused(&shared, &headers, Scope::Read) {
        return refusal;
    }
    answer(
        async {
            crate::core::check_execution_id(&id)?;
            let record = shared.core.get(&id, false).await?;
            match query.as_deref() {
                None | Some("") => Ok(execution_json(&record)),
                Some("view=full") => Ok(execution_full_json(&record)),
                Some(other) => Err(Error::InvalidArgument(format!("unknown query {other:?} (view=full)"))),
            }
        }
        .await,
    )
}

/// `{id}:{verb}` (split at the last colon: ids may hold colons, verbs do not).
fn split_target(target: &str) -> Result<(&str, &str)> {
    target.rsplit_once(':').ok_or_else(|| {
        Error::InvalidArgument(format!(
            "POST to .../{{id}}:complete, :fail, :cancel, :heartbeat or :redeliver, not .../{target}"
        ))
    })
}

async fn act(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(target): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let (id, verb) = match split_target(&target) {
        Ok(split) => split,
        Err(err) => return http_status(&err).into_response(),
    };
    let scope = if verb == "callbackUrl" { Scope::Admin } else { Scope::Settle };
    if let Some(refusal) = refused(&shared, &headers, scope) {
        return refusal;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return http_error(rejection.status(), "InvalidInput", &rejection.body_text()).into_response()
        }
    };
    answer(async {
        crate::core::check_execution_id(id)?;
        match verb {
            "heartbeat" => {
                let details = object(&body, &["details"])?;
                let details = values(&details, "details")?.map(|v| crate::payload::json_payloads(&v));
                let flags = shared.core.heartbeat(id, details).await?;
                Ok(json!({"cancel_requested": flags.cancel_requested, "paused": flags.paused, "reset": flags.reset}))
            }
            "callbackUrl" => {
                let fields = object(&body, &["outcomes", "ttl_seconds"])?;
                let outcomes = match &fields["outcomes"] {
                    Value::Null => Vec::new(),
                    Value::Array(items) => items
                        .iter()
                        .map(|o| o.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| Error::InvalidArgument("outcomes must be a list of strings".into()))?,
                    _ => return Err(Error::InvalidArgument("outcomes must be a list of strings".into())),
                };
                let ttl = match &fields["ttl_seconds"] {
                    Value::Null => 3600.0,
                    value => value.as_f64().filter(|t| *t > 0.0 && t.is_finite()).ok_or_else(|| {
                        Error::InvalidArgument("ttl_seconds must be a positive number".into())
                    })?,
                };
                shared.core.get(id, false).await?;
                #[allow(clippy::cast_possible_truncation)]
                let url = shared.callback_url(id, outcomes, (ttl * 1000.0) as i64)?;
                Ok(json!({"url": url}))
            }
            "redeliver" => {
                let settled = shared.core.redeliver(id).await?;
                Ok(settlement_json(id, settled))
            }
            verb => settle(&shared, id, verb, &body, None).await,
        }
    }.await)
}

/// The execution a callback URL settles, as JSON; a browser asking for a page gets the approval page,
/// which reads the same JSON.
async fn read_by_capability(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(capability): Path<String>,
) -> Response {
    if super::console::wants_page(&headers) {
        return super::console::approval_page();
    }
    answer(
        async {
            let grant = shared.core.capability_grant(&capability)?;
            let mut view = execution_json(&shared.core.get(&grant.execution_id, false).await?);
            view["allowed_outcomes"] = json!(grant.outcomes);
            view["expires_ms"] = json!(grant.expires_ms);
            Ok(view)
        }
        .await,
    )
}

async fn act_by_capability(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(target): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    if super::session::cross_origin(&headers) {
        let refusal = Refusal::PermissionDenied("a request from a page of another origin is refused".into());
        return http_refusal(refusal).into_response();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return http_error(rejection.status(), "InvalidInput", &rejection.body_text()).into_response()
        }
    };
    answer(
        async {
            let (capability, verb) = split_target(&target)?;
            // The capability names the execution; `settle` checks it grants this outcome.
            let grant = shared.core.capability_grant(capability)?;
            settle(&shared, &grant.execution_id, verb, &body, Some(capability)).await
        }
        .await,
    )
}

/// Settle `id` with the outcome `verb` names, from the JSON body.
async fn settle(shared: &Shared, id: &str, verb: &str, body: &[u8], capability: Option<&str>) -> Result<Value> {
    let outcome = match verb {
        "complete" => {
            let result: Value = if body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { json_body(body)? };
            Outcome::Complete { result: Some(crate::payload::json_payloads(&[result])) }
        }
        "fail" => {
            let fields = object(body, &["message", "type", "non_retryable", "details"])?;
            let message = fields["message"]
                .as_str()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| Error::InvalidArgument("fail needs a non-empty \"message\"".into()))?;
            Outcome::Fail {
                message: message.to_owned(),
                failure_type: optional_str(&fields, "type")?,
                non_retryable: match &fields["non_retryable"] {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    _ => return Err(Error::InvalidArgument("non_retryable must be true or false".into())),
                },
                details: values(&fields, "details")?.map(|v| crate::payload::json_payloads(&v)),
                failure: None,
            }
        }
        "cancel" => {
            let fields = object(body, &["details"])?;
            Outcome::Cancel { details: values(&fields, "details")?.map(|v| crate::payload::json_payloads(&v)) }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "the action is :complete, :fail or :cancel (with an API key also :heartbeat, :redeliver or \
                 :callbackUrl), not :{other}"
            )))
        }
    };
    let settled = shared.core.settle(id, outcome, None, true, capability).await?;
    Ok(settlement_json(id, settled))
}

/// The fields of the Python API's `Settlement`.
fn settlement_json(id: &str, settled: SettleOutcome) -> Value {
    let outcome = settled.name();
    let (reason, detail) = settled.reason_and_detail();
    json!({"execution_id": id, "outcome": outcome, "reason": reason, "detail": detail})
}

fn json_body(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("the body is not JSON: {e}")))
}

/// The body as a JSON object with only `allowed` fields (an empty body: no fields).
fn object(body: &[u8], allowed: &[&str]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value = json_body(body)?;
    let Value::Object(fields) = &value else {
        return Err(Error::InvalidArgument("the body must be a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::InvalidArgument(format!("unknown field {unknown:?} (fields: {})", allowed.join(", "))));
    }
    Ok(value)
}

fn optional_str(fields: &Value, name: &str) -> Result<String> {
    match &fields[name] {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        _ => Err(Error::InvalidArgument(format!("{name} must be a string"))),
    }
}

/// A list of values (`details`), or None when absent.
fn values(fields: &Value, name: &str) -> Result<Option<Vec<Value>>> {
    match &fields[name] {
        Value::Null => Ok(None),
        Value::Array(items) => Ok(Some(items.clone())),
        _ => Err(Error::InvalidArgument(format!("{name} must be a list of JSON values"))),
    }
}
