//! The one SQLite file under `DEVOPSBOT_DATA_DIR` that the embedded backends share.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::BackendError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester, created_at);
CREATE TABLE IF NOT EXISTS request_threads (
    request_created_at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (request_created_at, request_id)
) WITHOUT ROWID;
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
    claimed INTEGER NOT NULL DEFAULT 0,
    lane_since TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (dead, next_at);
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

/// Most pieces of work one transaction takes; more wait for the next.
const MAX_BATCH: usize = 256;

/// The one connection to the SQLite file, owned by a thread of its own.
/// Work is queued to that thread; whatever queued up while it committed runs
/// together in the next transaction (a group commit: one WAL append for a
/// whole burst of requests). A piece that fails is undone alone, and the
/// others' writes stand (see [`run_batch`]). Async callers never wait on a lock.
///
/// Lookups of one row by its key skip the queue (see [`Database::read`]).
#[derive(Clone)]
pub struct Database {
    // Declared first, so the readers close before the database thread winds up.
    readers: Arc<Readers>,
    queue: mpsc::Sender<Box<dyn Job>>,
}

/// Read-only connections to the same file, lent to one caller at a time.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Readers kept open between reads; more are opened when needed, then closed.
const IDLE_READERS: usize = 8;

impl Readers {
    fn lend(&self) -> Result<Connection, BackendError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        if let Some(reader) = idle {
            return Ok(reader);
        }
        let reader = Connection::open(&self.path)?;
        reader.execute_batch("PRAGMA query_only = 1; PRAGMA busy_timeout = 5000;")?;
        plans_ignore_bound_values(&reader)?;
        Ok(reader)
    }

    fn give_back(&self, reader: Connection) {
        // One left inside a transaction would hold its snapshot, and no checkpoint
        // could copy the log past it.
        if !reader.is_autocommit() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(reader);
        }
    }
}

/// A piece of queued work and whoever waits for its outcome.
trait Job: Send {
    /// Runs the work; false if it failed and its writes must be undone. May
    /// run again after its transaction was rolled back: the work only reads
    /// and writes the database, so the last run is the one that counts.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Hands over the outcome once the transaction is committed (or failed).
    fn finish(self: Box<Self>, committed: Result<(), BackendError>);
}

struct Pending<T, F, R> {
    work: F,
    outcome: Option<Result<T, BackendError>>,
    reply: R,
}

impl<T, F, R> Job for Pending<T, F, R>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, BackendError> + Send,
    R: FnOnce(Result<T, BackendError>) + Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(connection)))
                .unwrap_or_else(|_| Err(BackendError::Refused("a database task panicked".into())));
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn finish(self: Box<Self>, committed: Result<(), BackendError>) {
        let this = *self;
        let outcome = match (committed, this.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(error), _) => Err(error),
            (Ok(()), None) => Err(BackendError::Refused("a database task never ran".into())),
        };
        (this.reply)(outcome);
    }
}

impl Database {
    /// Opens the file for this process alone: a second bot on the same data
    /// directory would post and run what this one does (it is refused).
    pub fn open(path: &Path) -> Result<Database, BackendError> {
        let lock = lock_for_this_process(path)?;
        let connection = Connection::open(path)?;
        // Statement and savepoint journals stay in memory: past 64 KiB SQLite spills them
        // to a temporary file, which under load cost a fifth of the writer's time in writes.
        // (Sorts and temporary tables stay in memory too; ours are a few hundred rows.)
        // The log keeps the size it grows to under load (up to `WRITER_CHECKPOINTS_PAST`
        // pages, 41 MB) when it starts afresh: cut back to 16 MiB, it grew again at each
        // round, and every page the file grew by was allocated and zeroed on the writer's
        // path (a fifth of its time per click). Only a log that outgrew 64 MiB, when
        // checkpoints fell behind, is cut back.
        connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864;",
        )?;
        connection.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINTS_PAST)?;
        connection.execute_batch(SCHEMA)?;
        migrate(&connection)?;
        // Every statement the backends run stays parsed.
        connection.set_prepared_statement_cache_capacity(64);
        plans_ignore_bound_values(&connection)?;
        // One signal waiting is enough: commits while a checkpoint runs fold into it.
        let (committed, commits) = mpsc::sync_channel::<()>(1);
        let checkpoints = checkpoint_in_background(Connection::open(path)?, commits)?;
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                serve(connection, jobs, committed);
                let _ = checkpoints.join();
                drop(lock);
            })
            .map_err(|error| BackendError::Unavailable(format!("sqlite thread: {error}")))?;
        let readers = Arc::new(Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        });
        Ok(Database { readers, queue })
    }

    /// Runs `work` in the next transaction; when this returns, its writes are
    /// committed (or, if it returned an error, undone).
    ///
    /// `work` may run more than once (when another piece of its batch fails,
    /// the batch runs again), and only its last run counts: it must do nothing
    /// but read and write through the connection it is given.
    pub async fn run<T, F>(&self, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, BackendError> + Send + 'static,
    {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.queue(work, move |result| {
            let _ = reply.send(result);
        })?;
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Runs `work`, which only reads, at once on the caller's thread and on a
    /// connection of its own. For lookups of a row by its key, which take
    /// microseconds: queued to the database thread, each would wait for the
    /// batch under way and cost two thread hand-offs. Sees committed data only.
    pub fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let reader = self.readers.lend()?;
        let outcome = work(&reader);
        self.readers.give_back(reader);
        outcome
    }

    /// Runs one statement in the next transaction; the rows it changed.
    pub async fn execute<P>(&self, sql: &'static str, values: P) -> Result<usize, BackendError>
    where
        P: rusqlite::Params + Clone + Send + 'static,
    {
        self.run(move |connection| Ok(connection.prepare_cached(sql)?.execute(values.clone())?))
            .await
    }

    /// [`Database::run`] for code that is not async (start-up, operators' tools);
    /// `work` may run more than once, as there.
    pub fn run_blocking<T, F>(&self, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, BackendError> + Send + 'static,
    {
        let (reply, outcome) = mpsc::sync_channel(1);
        self.queue(work, move |result| {
            let _ = reply.send(result);
        })?;
        outcome.recv().unwrap_or_else(|_| Err(stopped()))
    }

    fn queue<T, F>(
        &self,
        work: F,
        reply: impl FnOnce(Result<T, BackendError>) + Send + 'static,
    ) -> Result<(), BackendError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, BackendError> + Send + 'static,
    {
        let job = Pending {
            work,
            outcome: None,
            reply,
        };
        self.queue.send(Box::new(job)).map_err(|_| stopped())
    }

    /// Readiness: the file is open and answers a query.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.run(|connection| Ok(connection.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

/// How long opening waits for a previous run of this process to let go.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// An exclusive lock beside the database file, held while the database
/// thread runs; the system drops it when the process dies, however it dies.
fn lock_for_this_process(path: &Path) -> Result<std::fs::File, BackendError> {
    let lock_path = path.with_extension("lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| BackendError::Unavailable(format!("{}: {error}", lock_path.display())))?;
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BackendError::Refused(format!(
                    "another devops-bot is using {} (DEVOPSBOT_DATA_DIR); run one bot per data directory",
                    path.parent().unwrap_or(path).display()
                )))
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(BackendError::Unavailable(format!(
                    "{}: {error}",
                    lock_path.display()
                )))
            }
        }
    }
}

/// A checkpoint copies the log back into the database file and syncs both, a
/// matter of milliseconds: done by the writer, it stalls whichever commit
/// crossed the threshold. A thread of its own does it instead, soon after
/// commits, so the log stays short and the writer, starting it afresh, only
/// syncs its header.
///
/// Least time between two background checkpoints: under a steady load one
/// runs this often, not after every commit.
const CHECKPOINT_GAP: Duration = Duration::from_millis(10);
/// How soon a checkpoint that left part of the log behind is tried again.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
/// The writer checkpoints by itself only past this many pages of log (40 MB).
/// The log starts afresh only when a write begins right after a checkpoint
/// caught up, which under a sustained load the background thread seldom
/// manages, so the log grows until the writer checkpoints. At SQLite's
/// default, 1000 pages, that came every ~50 ms of load, with three syncs on
/// the writer's path (15 % of its time).
const WRITER_CHECKPOINTS_PAST: u32 = 10_000;

/// Checkpoints after each `commits` signal (at most every `CHECKPOINT_GAP`)
/// without waiting on the writer, and once more when the writer stops.
fn checkpoint_in_background(
    connection: Connection,
    commits: mpsc::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, BackendError> {
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let mut behind = false;
            loop {
                // A checkpoint that could not copy the whole log (a reader was on it) is
                // tried again after a while, commits or not.
                let stopping = if behind {
                    matches!(
                        commits.recv_timeout(CHECKPOINT_RETRY),
                        Err(mpsc::RecvTimeoutError::Disconnected)
                    )
                } else {
                    commits.recv().is_err()
                };
                behind = match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                }) {
                    Ok((in_log, copied)) => copied < in_log,
                    Err(error) => {
                        tracing::warn!(%error, "sqlite: a checkpoint failed; it is tried again");
                        true
                    }
                };
                if stopping {
                    return;
                }
                std::thread::sleep(CHECKPOINT_GAP);
            }
        })
        .map_err(|error| BackendError::Unavailable(format!("sqlite checkpoint thread: {error}")))
}

fn stopped() -> BackendError {
    BackendError::Unavailable("the SQLite thread has stopped".into())
}

/// How long the writer lets a batch gather while others are writing. A commit logs
/// every page its batch changed, and the pieces of a batch share most of them (the
/// growing ends of tables and indexes): under load, batches of 15–25 pieces logged
/// 10 KB per stored deploy, and gathered for this long, 40–60 pieces logged 8.6 KB,
/// for a tenth less of the writer's time per deploy. As PostgreSQL's `commit_delay`,
/// only when the last batch shows others are writing: alone, a write is not held.
const GATHER_FOR: Duration = Duration::from_micros(200);
/// A batch of at least this many pieces means others are writing.
const GATHER_AFTER: usize = 8;

/// The database thread: takes what is queued, runs it in one transaction,
/// commits, then tells each waiter. Ends when every `Database` is dropped.
fn serve(
    connection: Connection,
    jobs: mpsc::Receiver<Box<dyn Job>>,
    committed: mpsc::SyncSender<()>,
) {
    let mut others_writing = false;
    while let Ok(first) = jobs.recv() {
        if others_writing {
            std::thread::sleep(GATHER_FOR);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        others_writing = batch.len() >= GATHER_AFTER;
        let outcome = run_batch(&connection, &mut batch);
        if let Err(error) = &outcome {
            tracing::error!(%error, pieces = batch.len(), "sqlite: a transaction failed");
        }
        for job in batch {
            job.finish(outcome.clone());
        }
        // Full means a checkpoint is already due.
        let _ = committed.try_send(());
    }
}

/// Runs a batch in one transaction, undoing the writes of each piece that
/// fails and only those.
///
/// A savepoint per piece copies every page the piece changes into its journal
/// first, about a quarter of the writer's time, and pieces seldom fail after
/// writing (a refusal is found out before anything is written). So the batch
/// runs without savepoints; a piece that fails having changed no row needs no
/// undoing. Only when one fails after writing is the batch rolled back and run
/// again, each piece then in a savepoint of its own.
fn run_batch(connection: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BackendError> {
    if run_pieces(connection, batch, Undo::WholeBatch)? {
        return Ok(());
    }
    run_pieces(connection, batch, Undo::EachPiece).map(|_| ())
}

/// What a failed piece undoes.
#[derive(Clone, Copy, PartialEq)]
enum Undo {
    /// The whole transaction: cheapest while every piece succeeds.
    WholeBatch,
    /// Only its own writes, kept apart by a savepoint.
    EachPiece,
}

/// Runs the pieces in one transaction; false (and rolled back) if a piece
/// failed after writing under [`Undo::WholeBatch`].
fn run_pieces(
    connection: &Connection,
    batch: &mut [Box<dyn Job>],
    undo: Undo,
) -> Result<bool, BackendError> {
    // Kept prepared: parsed anew for every job, these cost a fair share of a small write.
    let control = |sql: &str| -> Result<(), BackendError> {
        connection.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    // A rollback that failed last time must not leave every later batch failing.
    if !connection.is_autocommit() {
        control("ROLLBACK")?;
    }
    control("BEGIN")?;
    let outcome = (|| {
        for job in batch.iter_mut() {
            if undo == Undo::EachPiece {
                control("SAVEPOINT job")?;
            }
            let changes_before = connection.total_changes();
            let succeeded = job.run(connection);
            // A full disk or an I/O error makes SQLite roll the whole transaction
            // back by itself: nothing of this batch is written, so nothing more runs.
            if connection.is_autocommit() {
                return Err(BackendError::Unavailable(
                    "sqlite rolled the transaction back (disk full or I/O error)".into(),
                ));
            }
            match undo {
                Undo::WholeBatch if !succeeded && connection.total_changes() != changes_before => {
                    control("ROLLBACK")?;
                    return Ok(false);
                }
                Undo::WholeBatch => {}
                Undo::EachPiece => {
                    if !succeeded {
                        control("ROLLBACK TO job")?;
                    }
                    control("RELEASE job")?;
                }
            }
        }
        control("COMMIT")?;
        Ok(true)
    })();
    if outcome.is_err() && !connection.is_autocommit() {
        let _ = control("ROLLBACK");
    }
    outcome
}

/// Statements stay as parsed whatever is bound to them. Otherwise SQLite folds
/// a bound `LIMIT ?` into the plan and parses the statement again whenever it is
/// bound to another number: the outbox's claim, every time its room changed, a few
/// per cent of the writer's time. No plan is lost: nothing runs `ANALYZE`, binds a
/// `LIKE` pattern or binds the value that qualifies a partial index (the pending
/// requests' index is queried with the literal `'pending'`), the other uses of
/// bound values.
fn plans_ignore_bound_values(connection: &Connection) -> Result<(), BackendError> {
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Adds `column` to `table` in a file written before it had one.
fn add_column_if_missing(
    connection: &Connection,
    table: &'static str,
    column: &'static str,
    definition: &'static str,
) -> Result<(), BackendError> {
    let present = connection
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !present {
        connection.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {column} {definition};"
        ))?;
    }
    Ok(())
}

/// Brings a file written by an earlier version up to the current schema.
fn migrate(connection: &Connection) -> Result<(), BackendError> {
    add_column_if_missing(
        connection,
        "outbox",
        "claimed",
        "INTEGER NOT NULL DEFAULT 0",
    )?;
    // Threads and lanes are filed under when their request was created, so they are
    // written and deleted at the growing end of their index: filed by the request's
    // id alone (a random UUID), each dirtied a page of its own, and the writer logged
    // 3.4 pages per deploy instead of 2.5, and 3.4–4 per card posted instead of 2.4–2.8.
    // Not the rowid: `VACUUM` may renumber those.
    let has_threads_by_id = connection
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'threads'")?
        .exists([])?;
    if has_threads_by_id {
        connection.execute_batch(
            "INSERT OR IGNORE INTO request_threads
                 SELECT r.created_at, t.request_id, t.platform, t.channel, t.ts
                 FROM threads AS t JOIN requests AS r ON r.id = t.request_id;
             DROP TABLE threads;",
        )?;
    }
    add_column_if_missing(
        connection,
        "outbox",
        "lane_since",
        "TEXT NOT NULL DEFAULT ''",
    )?;
    // Effects queued without it (before the column, or by an earlier version run
    // again since) are filed under their request too, or their lane would split
    // in two and run out of order. Every time: cheap when there are none.
    connection.execute_batch(
        "DROP INDEX IF EXISTS outbox_by_lane;
         CREATE INDEX IF NOT EXISTS outbox_by_lane_in_order ON outbox (lane_since, lane, dead, seq);
         UPDATE outbox SET lane_since = requests.created_at FROM requests
         WHERE outbox.lane_since = ''
           AND requests.id = substr(outbox.lane, instr(outbox.lane, ':') + 1);",
    )?;
    add_column_if_missing(connection, "requests", "expires_at", "INTEGER")?;
    // The expiry sweep reads only the requests whose time is up, not every pending one.
    // Pending requests without an expiry (stored by an earlier version, or by one run
    // again later) take it from their body; cheap when there are none.
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS requests_pending_by_expiry ON requests (expires_at)
         WHERE status = 'pending';
         UPDATE requests INDEXED BY requests_pending_by_expiry
         SET expires_at = CAST(
             (julianday(json_extract(body, '$.expiresAt')) - 2440587.5) * 86400000 AS INTEGER)
         WHERE status = 'pending' AND expires_at IS NULL;",
    )?;
    // Pending requests are listed through the index above. An index of every request
    // by status had two entries moved by each change of status (a click, a completion),
    // for one query that only ever asks for the pending ones.
    connection.execute_batch("DROP INDEX IF EXISTS requests_by_status;")?;
    Ok(())
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    enum Piece {
        Writes,
        FailsBeforeWriting,
        FailsAfterWriting,
        PanicsAfterWriting,
    }

    /// Runs `pieces` as one batch, in order: each writes its key (unless it
    /// fails first) and answers how many keys it sees. Their outcomes, and how
    /// many times each ran.
    fn as_one_batch(
        db: &Database,
        pieces: &[Piece],
    ) -> (Vec<Result<i64, BackendError>>, Vec<usize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (held, _) = mpsc::channel();
        db.queue(
            |_| {
                std::thread::sleep(Duration::from_millis(150));
                Ok(())
            },
            move |outcome| drop(held.send(outcome)),
        )
        .unwrap();
        // The writer has taken the piece that holds it; what follows queues up behind it.
        std::thread::sleep(Duration::from_millis(30));
        let runs: Arc<Vec<AtomicUsize>> =
            Arc::new(pieces.iter().map(|_| AtomicUsize::new(0)).collect());
        let outcomes: Vec<_> = pieces
            .iter()
            .enumerate()
            .map(|(n, piece)| {
                let (piece, runs) = (*piece, runs.clone());
                let (reply, outcome) = mpsc::channel();
                db.queue(
                    move |connection| {
                        runs[n].fetch_add(1, Ordering::SeqCst);
                        if let Piece::FailsBeforeWriting = piece {
                            return Err(BackendError::Refused("refused before writing".into()));
                        }
                        connection.execute(
                            "INSERT INTO dedupe (key, expires_at) VALUES (hex(randomblob(16)), 0)",
                            [],
                        )?;
                        match piece {
                            Piece::FailsAfterWriting => {
                                Err(BackendError::Refused("refused after writing".into()))
                            }
                            Piece::PanicsAfterWriting => panic!("a piece gave up"),
                            _ => Ok(connection.query_row(
                                "SELECT COUNT(*) FROM dedupe",
                                [],
                                |row| row.get(0),
                            )?),
                        }
                    },
                    move |result| drop(reply.send(result)),
                )
                .unwrap();
                outcome
            })
            .collect();
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| outcome.recv().unwrap())
            .collect();
        let runs = runs
            .iter()
            .map(|runs| runs.load(Ordering::SeqCst))
            .collect();
        (outcomes, runs)
    }

    #[test]
    fn a_piece_that_fails_is_undone_alone_and_the_batch_runs_again_only_if_it_wrote() {
        use Piece::*;
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("state.db")).unwrap();
        let counts = |outcomes: Vec<Result<i64, BackendError>>| -> Vec<Option<i64>> {
            outcomes.into_iter().map(Result::ok).collect()
        };

        let (outcomes, runs) = as_one_batch(&db, &[Writes, Writes, Writes]);
        assert_eq!(
            (counts(outcomes), runs),
            (vec![Some(1), Some(2), Some(3)], vec![1, 1, 1])
        );

        // Refused before writing: nothing to undo, nothing runs twice.
        let (outcomes, runs) = as_one_batch(&db, &[Writes, FailsBeforeWriting, Writes]);
        assert_eq!(
            (counts(outcomes), runs),
            (vec![Some(4), None, Some(5)], vec![1, 1, 1])
        );

        // Failed after writing: its row goes, the others' stay, and each answer is
        // the one from the run that was committed.
        for failing in [FailsAfterWriting, PanicsAfterWriting] {
            let (outcomes, runs) = as_one_batch(&db, &[Writes, failing, Writes]);
            let seen = db
                .read(|c| {
                    Ok(c.query_row("SELECT COUNT(*) FROM dedupe", [], |row| {
                        row.get::<_, i64>(0)
                    })?)
                })
                .unwrap();
            assert_eq!(counts(outcomes), vec![Some(seen - 1), None, Some(seen)]);
            // The first pass stopped at the failing piece.
            assert_eq!(runs, vec![2, 2, 1]);
        }
        let keys = db
            .read(|connection| {
                let mut select = connection.prepare("SELECT key FROM dedupe")?;
                let keys = select
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(keys)
            })
            .unwrap();
        assert_eq!(keys.len(), 9, "three, two, two and two rows: {keys:?}");
    }

    #[test]
    fn the_log_is_copied_into_the_database_file_off_the_writers_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Database::open(&path).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        db.run_blocking(|connection| {
            for n in 0..200 {
                connection.execute(
                    "INSERT INTO dedupe (key, expires_at) VALUES (?1, 0)",
                    (format!("{n}-{}", "x".repeat(1000)),),
                )?;
            }
            Ok(())
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while size() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            size() > before,
            "the writer checkpoints only past {WRITER_CHECKPOINTS_PAST} pages, so the background thread did this"
        );
    }

    #[test]
    fn the_log_keeps_the_size_it_grew_to_when_it_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Database::open(&path).unwrap();
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        let log = dir.path().join("state.db-wal");
        let write = |rows: usize| {
            db.run_blocking(move |connection| {
                for _ in 0..rows {
                    connection.execute(
                        "INSERT INTO dedupe (key, expires_at) VALUES (?1, 0)",
                        (format!("{}-{}", uuid::Uuid::new_v4(), "x".repeat(2000)),),
                    )?;
                }
                Ok(())
            })
            .unwrap()
        };
        write(5000);
        let grown = size(&log);
        assert!(grown > 24 << 20, "a log of {grown} bytes");
        // Pages in the log, and how many of them are in the database file.
        let checkpoint = || -> (i64, i64) {
            db.read(|connection| {
                Ok(
                    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get(1)?, row.get(2)?))
                    })?,
                )
            })
            .unwrap()
        };
        // The first write after a checkpoint that copied the whole log starts it afresh,
        // unless the background checkpoint held a reader's slot just then: tried again.
        let mut pages_in_log = i64::MAX;
        for _ in 0..20 {
            let (in_log, copied) = checkpoint();
            if copied < in_log {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            write(1);
            pages_in_log = checkpoint().0;
            if pages_in_log < 10 {
                break;
            }
        }
        assert!(
            pages_in_log < 10,
            "the log started afresh: {pages_in_log} pages"
        );
        assert_eq!(size(&log), grown, "the log's file was cut back");
    }

    #[test]
    fn requests_stored_before_the_expiry_column_get_their_expiry_from_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let earlier = Connection::open(&path).unwrap();
        earlier
            .execute_batch(
                r#"CREATE TABLE requests (id TEXT PRIMARY KEY, requester TEXT NOT NULL,
                       status TEXT NOT NULL, created_at TEXT NOT NULL, version INTEGER NOT NULL,
                       body TEXT NOT NULL);
                   INSERT INTO requests VALUES ('r1', 'slack:U1', 'pending', '', 0,
                       '{"expiresAt":"2026-12-04T14:32:45.088934747Z"}');"#,
            )
            .unwrap();
        drop(earlier);
        let db = Database::open(&path).unwrap();
        let expires_at: i64 = db
            .read(|connection| {
                Ok(connection.query_row(
                    "SELECT expires_at FROM requests WHERE id = 'r1'",
                    [],
                    |row| row.get(0),
                )?)
            })
            .unwrap();
        let expected = chrono::DateTime::parse_from_rfc3339("2026-12-04T14:32:45.089Z").unwrap();
        assert_eq!(expires_at, expected.timestamp_millis());
    }

    #[test]
    fn a_second_bot_on_the_same_data_is_refused_and_the_next_run_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = Database::open(&path).unwrap();
        let refused = Database::open(&path).err().unwrap();
        assert!(
            refused.to_string().contains("another devops-bot is using"),
            "{refused}"
        );
        drop(first);
        assert!(
            Database::open(&path).is_ok(),
            "the lock goes with the first run"
        );
    }
}
