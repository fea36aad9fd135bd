//! The one SQLite file under `DEVOPSBOT_DATA_DIR` that the embedded backends share.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use super::BackendError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester, created_at);
CREATE INDEX IF NOT EXISTS requests_by_status ON requests (status);
CREATE TABLE IF NOT EXISTS threads (
    request_id TEXT PRIMARY KEY,
    platform TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dedupe (
    key TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lane TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    claimed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (lane, dead, seq);
CREATE TABLE IF NOT EXISTS executions (
    request_id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    completion TEXT
);
CREATE TABLE IF NOT EXISTS bus_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    sealed_envelope TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bus_published (
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vault (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    version_id TEXT NOT NULL,
    sealed_value TEXT NOT NULL,
    kms_key TEXT,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    parameters TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#;

/// A shared connection. Every statement is short, so a mutex is cheaper than a pool.
#[derive(Clone)]
pub struct Database {
    connection: Arc<Mutex<Connection>>,
}

impl Database {
    pub fn open(path: &Path) -> Result<Database, BackendError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )?;
        connection.execute_batch(SCHEMA)?;
        migrate(&connection)?;
        // Every statement the backends run stays parsed.
        connection.set_prepared_statement_cache_capacity(64);
        Ok(Database {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Readiness: the file is open and answers a query.
    pub fn ping(&self) -> Result<(), BackendError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Brings a file written by an earlier version up to the current schema.
fn migrate(connection: &Connection) -> Result<(), BackendError> {
    let has_claimed = connection
        .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'claimed'")?
        .exists([])?;
    if !has_claimed {
        connection
            .execute_batch("ALTER TABLE outbox ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
