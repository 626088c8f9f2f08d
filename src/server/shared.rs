//! What the request handlers of both faces share: the core, the keys, the base of callback URLs, the
//! stop signal, and the few conversions both make.

use std::sync::Arc;

use crate::core::Core;
use crate::errors::{Error, Result};

use super::auth::Keys;

/// What every request handler shares.
pub struct Shared {
    pub core: Arc<Core>,
    pub keys: Keys,
    /// Where callback URLs point.
    pub base_url: String,
    /// Temporal's Web UI, which the console links parent workflows to.
    pub temporal_ui: Option<String>,
    /// Set when the server stops: streams (subscribe) end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Wait until the server stops (the guard `wait_for` returns is dropped here, not held across awaits).
pub async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

impl Shared {
    /// A URL that settles `id` with `outcomes` for `ttl_ms`, without a key: the path carries a capability.
    pub fn callback_url(&self, id: &str, outcomes: Vec<String>, ttl_ms: i64) -> Result<String> {
        callback_url(&self.core, &self.base_url, id, outcomes, ttl_ms)
    }
}

/// `base_url`'s callback URL for one execution (`Core::grant` in the path).
pub fn callback_url(core: &Core, base_url: &str, id: &str, outcomes: Vec<String>, ttl_ms: i64) -> Result<String> {
    if ttl_ms <= 0 {
        return Err(Error::InvalidArgument(format!("ttl must be positive, not {ttl_ms} ms")));
    }
    let base_url = public_url(base_url)?;
    let outcomes = if outcomes.is_empty() { vec!["complete".into(), "fail".into(), "cancel".into()] } else { outcomes };
    Ok(format!("{base_url}/v1/callbacks/{}", core.grant(id, outcomes, ttl_ms)?))
}

/// A server's base URL as callers reach it: http(s), no query or fragment, no trailing slash.
pub fn public_url(url: &str) -> Result<String> {
    let parsed = url::Url::parse(url).map_err(|e| Error::InvalidArgument(format!("a server's URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::InvalidArgument(format!(
            "a server's URL must be http(s) without query or fragment, not {url:?}"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}
