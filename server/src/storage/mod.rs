//! Durable storage: each instance's state and key-value data, behind a
//! [`Backend`] seam, with embedded SQLite ([`Storage::open_dir`],
//! [`Storage::in_memory`]) as the default.
//!
//! # The durability promise
//! A write is acknowledged — its RPC reply, state broadcast or any message
//! sent after it reaches a client — only once it is on disk
//! (`synchronous=FULL`: it survives a power loss). Until then the instance
//! goes on handling input; only its output waits (Durable Objects' *output
//! gate*). The writes of one turn (one hook) are committed atomically, and
//! writes of many instances share one commit (group commit), so the
//! `fsync` is paid once for many.
//!
//! # How
//! A turn's writes ([`InstanceStorage::put`], `set_state`) are buffered and
//! visible to the turn's own reads at once; when the hook returns they go
//! to the backend as one batch; a turn's state is written once (its last),
//! from the buffer of the frame that broadcasts it. The SQLite backend runs
//! on its own thread:
//! no SQLite call happens on an async worker, and the commit of one
//! instance never blocks another's hooks. A batch that fails (disk full)
//! fails its instance's pending output, and the instance returns to what is
//! on disk.

mod nats;
mod sqlite;

pub(crate) use nats::{bucket_key, NatsStorage};

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, Range};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::StorageError;
use crate::message::Utf8Bytes;
pub use sqlite::DATABASE_FILE;

/// A boxed, sendable future, as [`Backend`] methods return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Called once with a batch's outcome: `Ok` once it is durable.
pub type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Work run on a SQL backend's own connection, inside its current
/// transaction (see [`InstanceStorage::with_sql`]); returns whether it
/// succeeded (on failure, its writes are undone).
pub type SqlJob = Box<dyn FnOnce(&rusqlite::Connection) -> bool + Send>;

/// Told about each settled batch of an instance, in order: its number and
/// outcome. The runtime releases (or drops) the output that waited for it.
pub(crate) type Settle = Arc<dyn Fn(u64, Result<(), StorageError>) + Send + Sync>;

/// How far an instance's writes got: the newest batch opened (written to)
/// and the newest settled. Output sent while `opened > settled` waits.
#[derive(Debug, Default)]
pub(crate) struct WriteProgress {
    pub(crate) opened: AtomicU64,
    pub(crate) settled: AtomicU64,
}

impl WriteProgress {
    /// Whether some write is not yet durable: the batch output must wait for.
    pub(crate) fn waiting_for(&self) -> Option<u64> {
        let opened = self.opened.load(Ordering::Acquire);
        (opened > self.settled.load(Ordering::Acquire)).then_some(opened)
    }
}

/// Which instance data belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId {
    /// The agent's kebab-case name.
    pub agent: Arc<str>,
    /// The instance name.
    pub name: Arc<str>,
    /// The fencing token of this incarnation (cluster mode: the revision of
    /// its ownership claim; 0 on a single node). A backend refuses writes
    /// of an incarnation older than the newest it has seen.
    pub token: u64,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The instance's state, as JSON (see [`Backend::submit_with_state`]).
    State(String),
    /// A key-value entry, as JSON.
    Put(String, String),
    /// Removes a key.
    Delete(String),
    /// No data: a point the batch's durability vouches for (after
    /// [`InstanceStorage::with_sql`], whose writes went in directly).
    Barrier,
}

/// JSON text that is part of a shared buffer — a state's JSON inside the
/// `cf_agent_state` frame that broadcasts it — so that storing it takes no
/// copy of its own. Cheap to clone.
#[derive(Clone)]
pub struct SharedJson {
    buf: Utf8Bytes,
    range: Range<usize>,
}

impl SharedJson {
    /// The part `range` of `buf`; `None` unless it is on character
    /// boundaries within it.
    pub(crate) fn new(buf: Utf8Bytes, range: Range<usize>) -> Option<SharedJson> {
        buf.get(range.clone())?;
        Some(SharedJson { buf, range })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.buf[self.range.clone()]
    }
}

impl Deref for SharedJson {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for SharedJson {
    fn from(text: String) -> Self {
        let range = 0..text.len();
        SharedJson {
            buf: text.into(),
            range,
        }
    }
}

impl From<SharedJson> for String {
    fn from(json: SharedJson) -> Self {
        json.as_str().to_owned()
    }
}

impl fmt::Debug for SharedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(crate::message::truncate(self.as_str(), 64), f)
    }
}

/// Where instances' data lives. Implement it to put agents on another
/// store; every method is called from async code and must not block.
///
/// Writes of one instance arrive in order and must be applied in order; a
/// read must see every write submitted before it.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The instance's stored state, as JSON.
    fn load_state(&self, id: &InstanceId) -> BoxFuture<Result<Option<String>, StorageError>>;

    /// Applies `writes` atomically, after every batch submitted before for
    /// this instance, and calls `done` once they are durable (or failed).
    /// After a failure, the instance's later batches fail too until
    /// [`reset`](Self::reset).
    fn submit(&self, id: &InstanceId, writes: Vec<Write>, done: Done);

    /// [`submit`](Self::submit) for a batch that also sets the instance's
    /// state (`Some`), given apart from `writes` as text shared with the
    /// frame that broadcasts it (a turn's last state; the state is
    /// independent of the other writes). The default adds it to `writes` as
    /// a [`Write::State`], which copies it; a backend that can write it
    /// from the shared text overrides this.
    fn submit_with_state(
        &self,
        id: &InstanceId,
        state: Option<SharedJson>,
        mut writes: Vec<Write>,
        done: Done,
    ) {
        if let Some(state) = state {
            writes.push(Write::State(state.into()));
        }
        self.submit(id, writes, done);
    }

    /// Accept the instance's batches again after a failure.
    fn reset(&self, id: &InstanceId);

    /// One key-value entry, as JSON.
    fn get(&self, id: &InstanceId, key: &str) -> BoxFuture<Result<Option<String>, StorageError>>;

    /// The keys starting with `prefix`, in order.
    fn keys(&self, id: &InstanceId, prefix: &str) -> BoxFuture<Result<Vec<String>, StorageError>>;

    /// Runs `job` on the backend's SQL connection. Backends without SQL
    /// answer [`StorageError::Unsupported`].
    fn sql(&self, id: &InstanceId, job: SqlJob) -> BoxFuture<Result<(), StorageError>> {
        let _ = (id, job);
        Box::pin(async { Err(StorageError::Unsupported("SQL")) })
    }

    /// Completes once everything submitted so far is durable.
    fn flush(&self) -> BoxFuture<()>;

    /// The instance stopped here: whatever is kept for it may go.
    fn release(&self, id: &InstanceId) {
        let _ = id;
    }

    /// Whether the backend can serve now (a networked one may be cut off);
    /// the server reports not ready while it is not.
    fn is_ready(&self) -> bool {
        true
    }
}

/// The storage shared by all instances. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    backend: Arc<dyn Backend>,
}

impl Storage {
    /// Opens (creating if needed) `<dir>/agents.sqlite3`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Storage, StorageError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open(dir.join(DATABASE_FILE))
    }

    /// Opens (creating if needed) the SQLite database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Storage, StorageError> {
        Ok(Self::from_backend(sqlite::Sqlite::open(path.as_ref())?))
    }

    /// A private in-memory SQLite database (gone when the server stops);
    /// the default.
    pub fn in_memory() -> Storage {
        Self::from_backend(sqlite::Sqlite::in_memory())
    }

    /// Storage on another backend.
    pub fn from_backend(backend: impl Backend) -> Storage {
        Storage {
            backend: Arc::new(backend),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// One instance's view (incarnation `token`), with values up to
    /// `max_value` bytes of JSON.
    pub(crate) fn instance(
        &self,
        agent: &str,
        name: &str,
        token: u64,
        max_value: usize,
    ) -> InstanceStorage {
        InstanceStorage {
            inner: Arc::new(Inner {
                backend: self.backend.clone(),
                id: InstanceId {
                    agent: agent.into(),
                    name: name.into(),
                    token,
                },
                max_value,
                pending: Mutex::new(Pending::default()),
                in_turn: AtomicBool::new(false),
                open: AtomicBool::new(false),
                progress: Arc::default(),
                settle: OnceLock::new(),
            }),
        }
    }

    /// Completes once everything submitted so far is durable.
    pub async fn flush(&self) {
        self.backend.flush().await;
    }
}

/// One instance's own key-value store (and SQL access), from
/// [`AgentContext::storage`](crate::AgentContext::storage). Cheap to clone.
#[derive(Clone)]
pub struct InstanceStorage {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    id: InstanceId,
    max_value: usize,
    pending: Mutex<Pending>,
    /// A hook is running: its writes go out together when it returns.
    /// (Outside the lock, with `open`, so that a turn without writes takes
    /// no lock; both are sequentially consistent: of a write racing the
    /// end of a turn, one side sees the other and sends the batch.)
    in_turn: AtomicBool,
    /// A batch is open (`Pending::turn_seq` is set).
    open: AtomicBool,
    progress: Arc<WriteProgress>,
    settle: OnceLock<Settle>,
}

/// Writes not yet durable, so that reads see them.
#[derive(Default)]
struct Pending {
    /// This turn's writes, in order, and their batch number.
    turn: Vec<Write>,
    turn_seq: Option<u64>,
    /// This turn's last state (only the last of a turn is written).
    state: Option<SharedJson>,
    /// The latest pending value of each written key (`None`: deleted) and
    /// its batch.
    overlay: BTreeMap<String, (u64, Option<String>)>,
}

impl fmt::Debug for InstanceStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceStorage")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl InstanceStorage {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value under `key`, deserialized (writes of this turn included).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let pending = self.pending().overlay.get(key).map(|(_, v)| v.clone());
        let raw = match pending {
            Some(value) => value,
            None => self.inner.backend.get(&self.inner.id, key).await?,
        };
        raw.map(|r| crate::offload::json(r.len(), || serde_json::from_str(&r)))
            .transpose()
            .map_err(Into::into)
    }

    /// Stores `value` under `key`. It is visible to reads at once and
    /// durable with the current turn: anything the instance sends after it
    /// waits until it is on disk.
    ///
    /// # Errors
    /// [`StorageError::Json`] when it does not serialize;
    /// [`StorageError::TooLarge`] over [`max_state_bytes`](crate::AgentServer::max_state_bytes).
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let json = serde_json::to_string(value)?;
        if json.len() > self.inner.max_value {
            return Err(StorageError::TooLarge {
                max: self.inner.max_value,
            });
        }
        self.write(
            Write::Put(key.to_owned(), json.clone()),
            Some((key, Some(json))),
        );
        Ok(())
    }

    /// Removes `key`; returns whether it existed. Durable with the turn.
    pub async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let existed = self.pending().overlay.get(key).map(|(_, v)| v.is_some());
        let existed = match existed {
            Some(existed) => existed,
            None => self.inner.backend.get(&self.inner.id, key).await?.is_some(),
        };
        self.write(Write::Delete(key.to_owned()), Some((key, None)));
        Ok(existed)
    }

    /// Keys starting with `prefix`, in order (writes of this turn included).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys: std::collections::BTreeSet<String> = self
            .inner
            .backend
            .keys(&self.inner.id, prefix)
            .await?
            .into_iter()
            .collect();
        for (key, (_, value)) in self.pending().overlay.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        Ok(keys.into_iter().collect())
    }

    /// Runs `f` on the SQLite connection, on the storage thread, for the
    /// agent's own tables (the reference's `this.sql`). Tables are shared by
    /// every instance: key them by [`AgentContext::name`](crate::AgentContext::name).
    /// `f` runs atomically (a savepoint: an error undoes it), and its writes
    /// are durable with the current turn. It may call this storage's other
    /// methods (they run inline there). Not available on backends without
    /// SQL.
    ///
    /// # Errors
    /// What `f` returns, or [`StorageError::Unsupported`].
    pub async fn with_sql<R, F>(&self, f: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: SqlJob = Box::new(move |db| {
            let result = f(db);
            let ok = result.is_ok();
            let _ = tx.send(result);
            ok
        });
        self.inner.backend.sql(&self.inner.id, job).await?;
        // Its writes went in directly; output waits for a batch behind them.
        self.write(Write::Barrier, None);
        let result = rx.await.map_err(|_| StorageError::Unsupported("SQL"))?;
        Ok(result?)
    }

    /// The stored state, as JSON.
    pub(crate) async fn load_state(&self) -> Result<Option<String>, StorageError> {
        self.inner.backend.load_state(&self.inner.id).await
    }

    /// Buffers the state for this turn's batch (replacing any earlier
    /// state of the turn).
    pub(crate) fn save_state(&self, json: SharedJson) {
        self.record(|pending, _| pending.state = Some(json));
    }

    /// Adds a write to the open batch.
    fn write(&self, write: Write, overlay: Option<(&str, Option<String>)>) {
        self.record(|pending, seq| {
            if let Some((key, value)) = overlay {
                pending.overlay.insert(key.to_owned(), (seq, value));
            }
            pending.turn.push(write);
        });
    }

    /// Records a write in the open batch (opening one if needed), and sends
    /// the batch at once when no hook is running.
    fn record(&self, add: impl FnOnce(&mut Pending, u64)) {
        let mut pending = self.pending();
        let progress = &self.inner.progress;
        let seq = *pending
            .turn_seq
            .get_or_insert_with(|| progress.opened.fetch_add(1, Ordering::AcqRel) + 1);
        add(&mut pending, seq);
        self.inner.open.store(true, Ordering::SeqCst);
        let now = !self.inner.in_turn.load(Ordering::SeqCst);
        drop(pending);
        if now {
            self.submit();
        }
    }

    /// The instance's write progress, for the output gate.
    pub(crate) fn progress(&self) -> &Arc<WriteProgress> {
        &self.inner.progress
    }

    /// Who hears about settled batches (once, by the runtime).
    pub(crate) fn on_settle(&self, settle: Settle) {
        let _ = self.inner.settle.set(settle);
    }

    /// A hook starts: its writes are held until [`end_turn`](Self::end_turn).
    pub(crate) fn begin_turn(&self) {
        // A write racing this from another task may still go out alone:
        // harmless, so no ordering is needed here (only at the end).
        self.inner.in_turn.store(true, Ordering::Relaxed);
    }

    /// The hook returned: its writes go out as one batch. Returns the
    /// batch's number, if there were writes.
    pub(crate) fn end_turn(&self) -> Option<u64> {
        self.inner.in_turn.store(false, Ordering::SeqCst);
        if !self.inner.open.load(Ordering::SeqCst) {
            return None;
        }
        self.submit()
    }

    /// Sends the open batch, if any.
    fn submit(&self) -> Option<u64> {
        let (seq, state, writes) = {
            let mut pending = self.pending();
            let seq = pending.turn_seq.take()?;
            self.inner.open.store(false, Ordering::SeqCst);
            (seq, pending.state.take(), std::mem::take(&mut pending.turn))
        };
        let storage = self.clone();
        let submitted = std::time::Instant::now();
        let done: Done = Box::new(move |result| {
            crate::metrics::commit(submitted.elapsed().as_secs_f64(), result.is_ok());
            storage.settled(seq, result);
        });
        self.inner
            .backend
            .submit_with_state(&self.inner.id, state, writes, done);
        Some(seq)
    }

    /// Batch `seq` is settled: reads of its keys go to the backend again,
    /// and the runtime releases (or drops) the output waiting for it.
    fn settled(&self, seq: u64, result: Result<(), StorageError>) {
        self.pending().overlay.retain(|_, (batch, _)| *batch > seq);
        match self.inner.settle.get() {
            Some(settle) => settle(seq, result),
            None => self.inner.progress.settled.store(seq, Ordering::Release),
        }
    }

    /// The instance stopped: the backend may drop what it keeps for it.
    pub(crate) fn release(&self) {
        self.inner.backend.release(&self.inner.id);
    }

    /// After a failed batch: forget what is pending and let the backend
    /// take this instance's writes again.
    pub(crate) fn reset(&self) {
        let mut pending = self.pending();
        pending.turn.clear();
        pending.turn_seq = None;
        self.inner.open.store(false, Ordering::SeqCst);
        pending.state = None;
        pending.overlay.clear();
        drop(pending);
        self.inner.backend.reset(&self.inner.id);
    }
}
