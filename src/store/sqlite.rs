//! The embedded SQLite store (WAL, full sync: a commit survives a crash of any process).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};

use super::sql::{Backend, SqlStore};
use crate::errors::{Error, Result};
use crate::secrets::Keyring;

impl Backend for Sqlite {
    const SKIP_LOCKED: &'static str = "";
    const EXPLAIN: &'static str = "EXPLAIN QUERY PLAN ";
    const PLAN_COLUMN: &'static str = "detail";
    const PLAN_SETTINGS: &'static [&'static str] = &[];
    const REFRESH_STATISTICS: &'static str = "ANALYZE";
    const NOTIFY_SETTLED: &'static str = "";
    const NOTIFY_PENDING: &'static str = "";

    fn ids_in_json(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    fn contains(haystack: &str, needle: &str) -> String {
        format!("instr({haystack}, {needle}) > 0")
    }

    fn labels_hold(param: &str) -> String {
        // No wanted pair that the execution's labels lack (any key, however it is spelt).
        format!(
            "NOT EXISTS (SELECT 1 FROM json_each({param}) want WHERE NOT EXISTS \
             (SELECT 1 FROM json_each(e.labels) have WHERE have.key = want.key AND have.value = want.value))"
        )
    }
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Open (creating if missing) and migrate `sqlite:///path.db`, `sqlite:relative.db` or `sqlite::memory:`.
pub async fn open(url: &str, keyring: Arc<Keyring>) -> Result<SqlStore<Sqlite>> {
    // `mode=memory` counts only as a parameter: a folder of that name is a file path like any other.
    let in_memory = url == "sqlite::memory:"
        || url.split_once('?').is_some_and(|(_, query)| query.split('&').any(|p| p == "mode=memory"));
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidArgument(format!("bad SQLite store URL: {e}")))?
        .create_if_missing(true)
        .foreign_keys(true)
        // Several processes (worker, runners) share one file: wait for the write lock rather than fail.
        .busy_timeout(BUSY_TIMEOUT)
        .journal_mode(if in_memory { SqliteJournalMode::Memory } else { SqliteJournalMode::Wal })
        .synchronous(SqliteSynchronous::Full)
        // A cleared token (or any deleted content) is overwritten with zeros, not left in free space.
        .pragma("secure_delete", "on")
        // Pages that pruning frees can go back to the file system (`Store::reclaim_space`). Takes effect in
        // a file made now; an older file keeps what it has until a `VACUUM`.
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        // `PRAGMA optimize` reads at most this many rows of an index to refresh its statistics.
        .analysis_limit(400);
    // An in-memory database lives in one connection: keep exactly one, forever.
    let pool_options = if in_memory {
        SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        // One connection: writers in this process queue in the pool instead of in SQLite's busy handler,
        // which sleeps in growing steps; other processes still share the file through it.
        SqlitePoolOptions::new().max_connections(1)
    };
    let file = options.get_filename().display().to_string();
    let pool = pool_options.connect_with(options).await.map_err(|err| match Error::from(err) {
        // SQLITE_CANTOPEN: no such folder, or no right to write there.
        Error::Store(message) if message.contains("code: 14") => Error::StoreUnavailable(format!(
            "cannot open the SQLite store {file:?} ({message}): does its folder exist, and may this user write there?"
        )),
        other => other.naming(&format!("the SQLite store {file:?}")),
    })?;
    super::sql::migrate(&sqlx::migrate!("migrations/sqlite"), &pool).await?;
    // Planner statistics for a long-lived connection, as SQLite advises at open (kept current by
    // `Store::reclaim_space` later).
    sqlx::query("PRAGMA optimize=0x10002").execute(&pool).await?;
    Ok(SqlStore::new(pool, keyring))
}

/// Checkpoint the WAL into the database file and truncate it, soon after writes that cleared tokens
/// (`FORGET_WITHIN`): the WAL keeps the page images of earlier writes, which held those tokens, until it is
/// checkpointed (the database file itself overwrites them, `secure_delete`). Never waits: while another
/// connection holds the WAL (a reader of an older snapshot, another process's write) it is skipped, and
/// the next write that clears a token checkpoints again.
pub async fn forget_cleared_tokens(pool: &Pool<Sqlite>) {
    async fn checkpoint(conn: &mut SqliteConnection) -> sqlx::Result<()> {
        sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *conn).await?;
        let done = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *conn).await.map(drop);
        sqlx::query(&format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis())).execute(&mut *conn).await?;
        done
    }
    let Ok(mut conn) = pool.acquire().await else { return };
    if let Err(err) = checkpoint(&mut conn).await {
        // Its busy timeout may not be back: this connection is not used again.
        conn.close_on_drop();
        tracing::debug!(error = %err, "WAL checkpoint skipped");
    }
}
