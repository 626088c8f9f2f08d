//! The shared PostgreSQL store: several machines' workers, runners and reconcilers on one database.
//!
//! `postgres://user@host:5432/db?sslmode=verify-full&sslrootcert=ca.pem&schema=handshake` — the usual
//! libpq parameters (TLS among them), plus `schema`: the store's tables live in that schema (created if
//! missing), so several deployments can share a database. Migrations run at connect, each in its own
//! transaction; a database migrated by a newer version is refused, not downgraded.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Notify;

use super::sql::{Backend, SqlStore};
use crate::errors::{Error, Result};
use crate::secrets::Keyring;

/// The channel settles notify: `wait` in any process wakes at the commit, not at its next poll.
const SETTLED_CHANNEL: &str = "stigmer_handshake_settled";
/// The channel creates notify: a waiting `claim` in any process wakes at the commit.
const PENDING_CHANNEL: &str = "stigmer_handshake_pending";
/// Connections per process: the writer holds one, the listener one; reads, claims and heartbeats share the rest.
const MAX_CONNECTIONS: u32 = 16;

impl Backend for Postgres {
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const EXPLAIN: &'static str = "EXPLAIN ";
    const PLAN_COLUMN: &'static str = "QUERY PLAN";
    const PLAN_SETTINGS: &'static [&'static str] = &["SET LOCAL enable_seqscan = off", "SET LOCAL enable_sort = off"];
    const REFRESH_STATISTICS: &'static str = "ANALYZE executions, callbacks";
    const NOTIFY_SETTLED: &'static str = " RETURNING pg_notify('stigmer_handshake_settled', executions.id)";
    const NOTIFY_PENDING: &'static str = "SELECT pg_notify('stigmer_handshake_pending', '')";

    fn ids_in_json(param: &str) -> String {
        format!("SELECT jsonb_array_elements_text({param}::jsonb)")
    }

    fn contains(haystack: &str, needle: &str) -> String {
        format!("position({needle} in {haystack}) > 0")
    }

    fn labels_hold(param: &str) -> String {
        format!("e.labels::jsonb @> {param}::jsonb")
    }
}

/// Connect, create the schema if asked, and migrate.
pub async fn open(url: &str, keyring: Arc<Keyring>) -> Result<SqlStore<Postgres>> {
    let (url, schema) = split_schema(url)?;
    let mut options = PgConnectOptions::from_str(&url)
        .map_err(|e| Error::InvalidArgument(format!("bad PostgreSQL store URL: {e}")))?;
    if let Some(schema) = &schema {
        options = options.options([("search_path", schema.as_str())]);
    }
    // One connection first, alone: a refusal (no server, bad credentials) comes back at once naming the
    // server, where the pool would retry it until its acquire timeout and say only "pool timed out".
    let server = format!("PostgreSQL at {}:{}", options.get_host(), options.get_port());
    let first = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&options)).await;
    match first {
        Ok(Ok(connection)) => drop(connection.close().await),
        Ok(Err(err)) => return Err(Error::from(err).naming(&server)),
        Err(_) => return Err(Error::StoreUnavailable(format!("{server}: no answer in 10 s"))),
    }
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    if let Some(schema) = &schema {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).execute(&pool).await?;
    }
    super::sql::migrate(&sqlx::migrate!("migrations/postgres"), &pool).await?;
    Ok(SqlStore::new(pool, keyring))
}

/// The URL parameters sqlx reads (`sqlx-postgres`'s `options/parse.rs`), besides `options[...]`.
const KNOWN_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Take our own `schema` parameter out of the URL (sqlx would ignore it with a warning).
fn split_schema(url: &str) -> Result<(String, Option<String>)> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| Error::InvalidArgument(format!("bad PostgreSQL store URL: {e}")))?;
    let mut schema = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if key == "schema" {
            if schema.replace(value.into_owned()).is_some() {
                return Err(Error::InvalidArgument("bad PostgreSQL store URL: schema is given twice".into()));
            }
        } else if KNOWN_PARAMETERS.contains(&key.as_ref()) || key.starts_with("options[") {
            kept.push((key.into_owned(), value.into_owned()));
        } else {
            // sqlx would only log it: a misspelt sslmode must not quietly connect without TLS.
            return Err(Error::InvalidArgument(format!(
                "bad PostgreSQL store URL: unknown parameter {key:?} (known: schema, {})",
                KNOWN_PARAMETERS.join(", ")
            )));
        }
    }
    if let Some(name) = &schema {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "bad PostgreSQL store URL: schema {name:?} must be 1-63 lowercase letters, digits or _, not starting with a digit"
            )));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.into(), schema))
}

/// Wake `settled` whenever any process commits a settle, until the store is dropped. A lost connection
/// is re-established by the listener; waiters are woken then too, since a notification may have been
/// missed meanwhile (they re-read the store, so a spurious wake costs one read).
pub fn listen_settled(pool: PgPool, settled: Weak<Notify>, pending: Weak<Notify>) {
    tokio::spawn(async move {
        let mut listener = None;
        loop {
            if settled.strong_count() == 0 {
                return;
            }
            let Some(active) = listener.as_mut() else {
                match PgListener::connect_with(&pool).await {
                    Ok(mut new) => match new.listen_all([SETTLED_CHANNEL, PENDING_CHANNEL]).await {
                        Ok(()) => listener = Some(new),
                        Err(err) => tracing::warn!(error = %err, "could not listen for settles; retrying"),
                    },
                    Err(err) => tracing::warn!(error = %err, "could not connect the settle listener; retrying"),
                }
                wake(&settled);
                wake(&pending);
                if listener.is_none() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            };
            // Bounded, so a dropped store is noticed even when nothing is settled.
            match tokio::time::timeout(Duration::from_secs(5), active.try_recv()).await {
                Ok(Ok(Some(message))) if message.channel() == PENDING_CHANNEL => wake(&pending),
                Ok(Ok(Some(_))) => wake(&settled),
                // The connection was lost and is made again: what was notified meanwhile is unknown.
                Ok(Ok(None)) => {
                    wake(&settled);
                    wake(&pending);
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "settle listener lost its connection; reconnecting");
                    listener = None;
                }
                Err(_) => {}
            }
        }
    });
}

fn wake(settled: &Weak<Notify>) {
    if let Some(settled) = settled.upgrade() {
        settled.notify_waiters();
    }
}
