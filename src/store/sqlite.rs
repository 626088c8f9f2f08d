//! The embedded SQLite store (WAL, full sync: a commit survives a crash of any process).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Sqlite;

use super::sql::{Backend, SqlStore};
use crate::errors::{Error, Result};
use crate::secrets::Keyring;

impl Backend for Sqlite {
    const SKIP_LOCKED: &'static str = "";
    const NOTIFY_SETTLED: &'static str = "";

    fn ids_in_json(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }
}

/// Open (creating if missing) and migrate `sqlite:///path.db`, `sqlite:relative.db` or `sqlite::memory:`.
pub async fn open(url: &str, keyring: Arc<Keyring>) -> Result<SqlStore<Sqlite>> {
    let in_memory = url == "sqlite::memory:" || url.contains("mode=memory");
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidArgument(format!("bad SQLite store URL: {e}")))?
        .create_if_missing(true)
        .foreign_keys(true)
        // Several processes (worker, runners) share one file: wait for the write lock rather than fail.
        .busy_timeout(Duration::from_secs(30))
        .journal_mode(if in_memory { SqliteJournalMode::Memory } else { SqliteJournalMode::Wal })
        .synchronous(SqliteSynchronous::Full);
    // An in-memory database lives in one connection: keep exactly one, forever.
    let pool_options = if in_memory {
        SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        // One connection: writers in this process queue in the pool instead of in SQLite's busy handler,
        // which sleeps in growing steps; other processes still share the file through it.
        SqlitePoolOptions::new().max_connections(1)
    };
    let pool = pool_options.connect_with(options).await?;
    super::migrate(&sqlx::migrate!("migrations/sqlite"), &pool).await?;
    Ok(SqlStore::new(pool, keyring))
}
