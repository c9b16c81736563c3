//! The embedded SQLite backend: one database, one thread that owns it.
//!
//! Every operation is a message to the thread. It opens a transaction,
//! takes every operation already waiting (batches of many instances, reads,
//! SQL jobs), commits once — with `synchronous=FULL`, one `fsync` for all of
//! them (group commit) — and then reports each batch durable. The WAL is
//! kept bounded: `journal_size_limit`, and a truncating checkpoint whenever
//! the thread goes idle with a large WAL.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Backend, BoxFuture, Done, InstanceId, SharedJson, SqlJob, StorageError, Write};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "agents.sqlite3";

/// Operations committed together at most.
const GROUP_OPS: usize = 1024;

/// WAL size kept after a checkpoint (`journal_size_limit`), in bytes.
pub(crate) const WAL_LIMIT: i64 = 16 * 1024 * 1024;

/// How long a write waits for another process holding the database.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// WAL pages past which an idle thread truncates the WAL.
const CHECKPOINT_PAGES: i64 = 1024;

enum Op {
    Load(InstanceId, Reply<Option<String>>),
    Submit(InstanceId, Option<SharedJson>, Vec<Write>, Done),
    Reset(InstanceId),
    Get(InstanceId, String, Reply<Option<String>>),
    Keys(InstanceId, String, Reply<Vec<String>>),
    Sql(InstanceId, SqlJob, Reply<()>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StorageError>>;

thread_local! {
    /// The database, on the storage thread only: SQL jobs that call the
    /// storage API re-enter here instead of queueing behind themselves.
    static DB: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// The SQLite [`Backend`].
#[derive(Debug)]
pub(crate) struct Sqlite {
    tx: mpsc::Sender<Op>,
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Sqlite, StorageError> {
        let db = Connection::open(path)?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // Acknowledged means on disk, power loss included.
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "journal_size_limit", WAL_LIMIT)?;
        Self::start(db, true)
    }

    pub(crate) fn in_memory() -> Sqlite {
        let db = Connection::open_in_memory().expect("sqlite opens in memory");
        Self::start(db, false).expect("in-memory schema")
    }

    fn start(db: Connection, file: bool) -> Result<Sqlite, StorageError> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cf_agents_state (
                 agent TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
                 PRIMARY KEY (agent, name));
             CREATE TABLE IF NOT EXISTS cf_agents_kv (
                 agent TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                 PRIMARY KEY (agent, name, key));",
        )?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("agents-storage".into())
            .spawn(move || {
                DB.with(|cell| *cell.borrow_mut() = Some(db));
                run(&rx, file);
            })
            .map_err(|source| StorageError::Io {
                path: "storage thread".into(),
                source,
            })?;
        Ok(Sqlite { tx })
    }

    fn send(&self, op: Op) {
        // The thread lives as long as any sender: sending cannot fail.
        let _ = self.tx.send(op);
    }

    fn ask<T: Send + 'static>(
        &self,
        op: impl FnOnce(Reply<T>) -> Op,
        inline: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> BoxFuture<Result<T, StorageError>> {
        // Called from a SQL job on the storage thread: run it right here.
        if let Some(result) = DB.with(|cell| cell.try_borrow().ok()?.as_ref().map(inline)) {
            return Box::pin(async { result });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(op(reply));
        Box::pin(async move {
            answer
                .await
                .unwrap_or(Err(StorageError::Unsupported("storage stopped")))
        })
    }
}

impl Backend for Sqlite {
    fn load_state(&self, id: &InstanceId) -> BoxFuture<Result<Option<String>, StorageError>> {
        let inline_id = id.clone();
        self.ask(|r| Op::Load(id.clone(), r), move |db| load(db, &inline_id))
    }

    fn submit(&self, id: &InstanceId, writes: Vec<Write>, done: Done) {
        self.send(Op::Submit(id.clone(), None, writes, done));
    }

    fn submit_with_state(
        &self,
        id: &InstanceId,
        state: Option<SharedJson>,
        writes: Vec<Write>,
        done: Done,
    ) {
        // Written from the shared frame: the bind's copy is the only one.
        self.send(Op::Submit(id.clone(), state, writes, done));
    }

    fn reset(&self, id: &InstanceId) {
        self.send(Op::Reset(id.clone()));
    }

    fn get(&self, id: &InstanceId, key: &str) -> BoxFuture<Result<Option<String>, StorageError>> {
        let (inline_id, inline_key) = (id.clone(), key.to_owned());
        self.ask(
            |r| Op::Get(id.clone(), key.to_owned(), r),
            move |db| get(db, &inline_id, &inline_key),
        )
    }

    fn keys(&self, id: &InstanceId, prefix: &str) -> BoxFuture<Result<Vec<String>, StorageError>> {
        let (inline_id, inline_prefix) = (id.clone(), prefix.to_owned());
        self.ask(
            |r| Op::Keys(id.clone(), prefix.to_owned(), r),
            move |db| keys(db, &inline_id, &inline_prefix),
        )
    }

    fn sql(&self, id: &InstanceId, job: SqlJob) -> BoxFuture<Result<(), StorageError>> {
        let mut job = Some(job);
        let inline_job = &mut job;
        let inline = |db: &Connection| match inline_job.take() {
            Some(job) => sql(db, job),
            None => Ok(()),
        };
        if let Some(result) = DB.with(|cell| cell.try_borrow().ok()?.as_ref().map(inline)) {
            return Box::pin(async { result });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Sql(id.clone(), job.take().expect("one job"), reply));
        Box::pin(async move {
            answer
                .await
                .unwrap_or(Err(StorageError::Unsupported("storage stopped")))
        })
    }

    fn flush(&self) -> BoxFuture<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Flush(tx));
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// The storage thread: group commits until every sender is gone.
fn run(rx: &mpsc::Receiver<Op>, file: bool) {
    let mut failed: HashSet<InstanceId> = HashSet::new();
    let mut next: Option<Op> = None;
    loop {
        let first = match next.take() {
            Some(op) => op,
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        DB.with(|cell| {
            let cell = cell.borrow();
            let db = cell.as_ref().expect("the storage thread's database");
            let mut group = Group {
                db,
                done: Vec::new(),
                flushed: Vec::new(),
                writers: Vec::new(),
                failed: &mut failed,
                error: None,
            };
            if let Err(err) = db.execute_batch("BEGIN IMMEDIATE") {
                group.error = Some(err.to_string());
            }
            group.apply(first);
            for _ in 1..GROUP_OPS {
                match rx.try_recv() {
                    Ok(op) => group.apply(op),
                    Err(_) => break,
                }
            }
            group.commit();
            match rx.try_recv() {
                Ok(op) => next = Some(op),
                // Idle: a good moment to keep the WAL small.
                Err(_) if file => checkpoint_if_large(db),
                Err(_) => {}
            }
        });
    }
}

/// One transaction's worth of operations.
struct Group<'a> {
    db: &'a Connection,
    /// Batches in this transaction, with their instance.
    done: Vec<Done>,
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
    writers: Vec<InstanceId>,
    failed: &'a mut HashSet<InstanceId>,
    /// Set once a write failed: the transaction is lost.
    error: Option<String>,
}

impl Group<'_> {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Load(id, reply) => {
                let _ = reply.send(load(self.db, &id));
            }
            Op::Get(id, key, reply) => {
                let _ = reply.send(get(self.db, &id, &key));
            }
            Op::Keys(id, prefix, reply) => {
                let _ = reply.send(keys(self.db, &id, &prefix));
            }
            Op::Reset(id) => {
                self.failed.remove(&id);
            }
            Op::Flush(tx) => self.flushed.push(tx),
            Op::Sql(id, job, reply) => {
                // Its writes share this transaction: if it is lost, so is
                // the instance's next batch (which vouches for them).
                self.writers.push(id);
                let _ = reply.send(sql(self.db, job));
            }
            Op::Submit(id, state, writes, done) => {
                if self.failed.contains(&id) {
                    done(Err(StorageError::Failed(
                        "an earlier write of this instance failed".into(),
                    )));
                    return;
                }
                if self.error.is_none() {
                    if let Err(err) = apply(self.db, &id, state.as_deref(), &writes) {
                        self.error = Some(err.to_string());
                    }
                }
                self.writers.push(id);
                self.done.push(done);
            }
        }
    }

    /// Commits, then reports every batch (all failed if anything did).
    fn commit(mut self) {
        if self.error.is_none() {
            if let Err(err) = self.db.execute_batch("COMMIT") {
                self.error = Some(err.to_string());
            }
        }
        if let Some(error) = &self.error {
            let _ = self.db.execute_batch("ROLLBACK");
            tracing::error!(%error, batches = self.done.len(), "storage commit failed");
            self.failed.extend(self.writers.drain(..));
            for done in self.done.drain(..) {
                done(Err(StorageError::Failed(error.clone())));
            }
        } else {
            for done in self.done.drain(..) {
                done(Ok(()));
            }
        }
        for tx in self.flushed.drain(..) {
            let _ = tx.send(());
        }
    }
}

fn apply(
    db: &Connection,
    id: &InstanceId,
    state: Option<&str>,
    writes: &[Write],
) -> rusqlite::Result<()> {
    let states = writes.iter().filter_map(|write| match write {
        Write::State(json) => Some(json.as_str()),
        _ => None,
    });
    for json in states.chain(state) {
        db.prepare_cached(
            "INSERT INTO cf_agents_state (agent, name, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent, name) DO UPDATE SET state = excluded.state",
        )?
        .execute(params![&*id.agent, &*id.name, json])?;
    }
    for write in writes {
        match write {
            Write::State(_) => {}
            Write::Put(key, json) => {
                db.prepare_cached(
                    "INSERT INTO cf_agents_kv (agent, name, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (agent, name, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![&*id.agent, &*id.name, key, json])?;
            }
            Write::Delete(key) => {
                db.prepare_cached(
                    "DELETE FROM cf_agents_kv WHERE agent = ?1 AND name = ?2 AND key = ?3",
                )?
                .execute(params![&*id.agent, &*id.name, key])?;
            }
            Write::Barrier => {}
        }
    }
    Ok(())
}

fn load(db: &Connection, id: &InstanceId) -> Result<Option<String>, StorageError> {
    Ok(db
        .prepare_cached("SELECT state FROM cf_agents_state WHERE agent = ?1 AND name = ?2")?
        .query_row(params![&*id.agent, &*id.name], |row| row.get(0))
        .optional()?)
}

fn get(db: &Connection, id: &InstanceId, key: &str) -> Result<Option<String>, StorageError> {
    Ok(db
        .prepare_cached(
            "SELECT value FROM cf_agents_kv WHERE agent = ?1 AND name = ?2 AND key = ?3",
        )?
        .query_row(params![&*id.agent, &*id.name, key], |row| row.get(0))
        .optional()?)
}

fn keys(db: &Connection, id: &InstanceId, prefix: &str) -> Result<Vec<String>, StorageError> {
    let mut stmt = db.prepare_cached(
        "SELECT key FROM cf_agents_kv WHERE agent = ?1 AND name = ?2
         AND substr(key, 1, length(?3)) = ?3 ORDER BY key",
    )?;
    let keys = stmt
        .query_map(params![&*id.agent, &*id.name, prefix], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(keys)
}

/// Runs a SQL job in a savepoint: an error (or panic) inside undoes it.
fn sql(db: &Connection, job: SqlJob) -> Result<(), StorageError> {
    db.execute_batch("SAVEPOINT agents_sql")?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(db)));
    if !matches!(outcome, Ok(true)) {
        db.execute_batch("ROLLBACK TO agents_sql")?;
    }
    db.execute_batch("RELEASE agents_sql")?;
    if outcome.is_err() {
        return Err(StorageError::Failed("the SQL job panicked".into()));
    }
    Ok(())
}

/// Truncates the WAL when it grew past [`CHECKPOINT_PAGES`] and every frame
/// could be copied back (a reader elsewhere may hold an old snapshot: then
/// it is left for a later idle moment, never waited for).
fn checkpoint_if_large(db: &Connection) {
    let passive: rusqlite::Result<(i64, i64)> =
        db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(1)?, row.get(2)?))
        });
    let Ok((log, copied)) = passive else { return };
    if log <= CHECKPOINT_PAGES || copied < log {
        return;
    }
    let _ = db.busy_timeout(std::time::Duration::ZERO);
    if let Err(err) = db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::debug!(%err, "WAL not truncated yet");
    }
    let _ = db.busy_timeout(BUSY_TIMEOUT);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> InstanceId {
        InstanceId {
            agent: "a".into(),
            name: name.into(),
            token: 0,
        }
    }

    /// Submits `writes` and waits for their outcome.
    async fn commit(db: &Sqlite, name: &str, writes: Vec<Write>) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        db.submit(&id(name), writes, Box::new(move |r| drop(tx.send(r))));
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn batches_reads_and_persistence() {
        let dir = std::env::temp_dir().join(format!("agents-rs-sqlite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DATABASE_FILE);
        {
            let db = Sqlite::open(&path).unwrap();
            assert_eq!(db.load_state(&id("n")).await.unwrap(), None);
            commit(
                &db,
                "n",
                vec![Write::State("1".into()), Write::State("2".into())],
            )
            .await
            .unwrap();
            commit(
                &db,
                "n",
                vec![
                    Write::Put("user:1".into(), "\"ann\"".into()),
                    Write::Put("user:2".into(), "\"bob\"".into()),
                    Write::Put("x".into(), "[1]".into()),
                    Write::Delete("user:1".into()),
                ],
            )
            .await
            .unwrap();
            assert_eq!(db.load_state(&id("n")).await.unwrap().as_deref(), Some("2"));
            assert_eq!(db.keys(&id("n"), "user:").await.unwrap(), ["user:2"]);
            assert_eq!(db.get(&id("n"), "x").await.unwrap().as_deref(), Some("[1]"));
            // Instances do not see each other's data.
            assert_eq!(db.keys(&id("m"), "").await.unwrap(), Vec::<String>::new());
            db.flush().await;
        }
        let db = Sqlite::open(&path).unwrap();
        assert_eq!(db.load_state(&id("n")).await.unwrap().as_deref(), Some("2"));
        assert_eq!(
            db.get(&id("n"), "user:2").await.unwrap().as_deref(),
            Some("\"bob\"")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_shared_state_is_written_after_the_batch_s_own() {
        let db = Sqlite::in_memory();
        let frame = r#"{"type":"cf_agent_state","state":{"v":2}}"#;
        let shared = SharedJson::new(frame.into(), 33..frame.len() - 1).unwrap();
        assert_eq!(&*shared, r#"{"v":2}"#);
        let (tx, rx) = tokio::sync::oneshot::channel();
        db.submit_with_state(
            &id("n"),
            Some(shared),
            vec![
                Write::State("1".into()),
                Write::Put("k".into(), "true".into()),
            ],
            Box::new(move |r| drop(tx.send(r))),
        );
        rx.await.unwrap().unwrap();
        assert_eq!(
            db.load_state(&id("n")).await.unwrap().as_deref(),
            Some(r#"{"v":2}"#)
        );
        assert_eq!(
            db.get(&id("n"), "k").await.unwrap().as_deref(),
            Some("true")
        );
        // A range off the text's character boundaries is refused.
        assert!(SharedJson::new("é".into(), 0..1).is_none());
        assert!(SharedJson::new("ab".into(), 1..3).is_none());
    }

    #[tokio::test]
    async fn a_failed_batch_fails_the_instance_until_reset() {
        let db = Sqlite::in_memory();
        commit(&db, "n", vec![Write::State("\"ok\"".into())])
            .await
            .unwrap();
        // Room for nothing more.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: SqlJob = Box::new(move |db| {
            let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            let ok = db.pragma_update(None, "max_page_count", pages).is_ok();
            let _ = tx.send(());
            ok
        });
        db.sql(&id("n"), job).await.unwrap();
        rx.await.unwrap();
        let big = "x".repeat(100_000);
        let err = commit(&db, "n", vec![Write::State(big)]).await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        // Later batches of the same instance fail too, until reset…
        let err = commit(&db, "n", vec![Write::State("\"small\"".into())])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("earlier write"), "{err}");
        assert_eq!(
            db.load_state(&id("n")).await.unwrap().as_deref(),
            Some("\"ok\"")
        );
        db.reset(&id("n"));
        commit(&db, "n", vec![Write::State("\"small\"".into())])
            .await
            .unwrap();
        assert_eq!(
            db.load_state(&id("n")).await.unwrap().as_deref(),
            Some("\"small\"")
        );
        // Other instances were never held up.
        commit(&db, "m", vec![Write::Put("k".into(), "1".into())])
            .await
            .unwrap();
    }
}
