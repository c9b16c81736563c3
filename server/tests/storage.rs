//! Storage: stored state is never deleted, output waits for durability,
//! failed writes become errors with nothing diverging, SQL cannot deadlock,
//! the WAL stays bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agents_server::storage::{Backend, BoxFuture, Done, InstanceId, SqlJob, Write};
use agents_server::{
    Agent, AgentContext, AgentServer, BoxError, Call, HookError, Reply, RpcError, Storage,
    StorageError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::util::*;

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agents-rs-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Puts a state row straight into the database file (as an older version
/// of an agent would have left it).
fn store_row(dir: &std::path::Path, agent: &str, name: &str, state: &str) {
    drop(Storage::open_dir(dir).unwrap()); // creates the schema
    let db = rusqlite::Connection::open(dir.join(agents_server::storage::DATABASE_FILE)).unwrap();
    db.execute(
        "INSERT OR REPLACE INTO cf_agents_state (agent, name, state) VALUES (?1, ?2, ?3)",
        [agent, name, state],
    )
    .unwrap();
}

fn stored_row(dir: &std::path::Path, agent: &str, name: &str) -> Option<String> {
    let db = rusqlite::Connection::open(dir.join(agents_server::storage::DATABASE_FILE)).unwrap();
    db.query_row(
        "SELECT state FROM cf_agents_state WHERE agent = ?1 AND name = ?2",
        [agent, name],
        |r| r.get(0),
    )
    .ok()
}

/// Rows that no longer decode into the agent's state survive a GET, a
/// connect and a restart: the instance does not start (1011 with the
/// reason, HTTP 500) and the row stays as it is.
#[tokio::test]
async fn stored_state_that_does_not_fit_is_never_deleted() {
    let dir = temp_dir("mismatch");
    store_row(&dir, "counter-agent", "renamed", r#"{"cnt":5}"#);
    store_row(
        &dir,
        "counter-agent",
        "retyped",
        r#"{"count":"not a number"}"#,
    );
    for _restart in 0..2 {
        let storage = Storage::open_dir(&dir).unwrap();
        let server = TestServer::start(agents_server_cli::demo::server().storage(storage)).await;
        let (status, body) = server.get("/agents/counter-agent/renamed").await;
        assert_eq!(status, 500);
        assert!(
            body.starts_with("Stored state does not fit: missing field `count`"),
            "{body}"
        );
        let mut c = server.connect("/agents/counter-agent/retyped").await;
        let (code, reason) = c.closed().await;
        assert_eq!(code, 1011);
        assert!(
            reason.starts_with("Stored state does not fit: invalid type"),
            "{reason}"
        );
        server.shutdown().await;
        assert_eq!(
            stored_row(&dir, "counter-agent", "renamed").as_deref(),
            Some(r#"{"cnt":5}"#)
        );
        assert_eq!(
            stored_row(&dir, "counter-agent", "retyped").as_deref(),
            Some(r#"{"count":"not a number"}"#)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Count {
    count: i64,
}

/// A counter whose first version stored `{"cnt": n}`.
struct CounterV2;

impl Agent for CounterV2 {
    type State = Count;

    fn upgrade_state(&self, stored: serde_json::Value) -> Result<Count, BoxError> {
        if let Some(n) = stored.get("cnt").and_then(serde_json::Value::as_i64) {
            return Ok(Count { count: n });
        }
        Ok(serde_json::from_value(stored)?)
    }

    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        let (by,): (i64,) = call.args()?;
        let count = cx.state().map_or(0, |s| s.count) + by;
        cx.set_state(Count { count })?;
        Reply::json(&count)
    }
}

/// `upgrade_state` converts old rows; they are rewritten only when the
/// agent next stores its state.
#[tokio::test]
async fn the_upgrade_hook_converts_old_rows() {
    let dir = temp_dir("upgrade");
    store_row(&dir, "counter", "old", r#"{"cnt":5}"#);
    let storage = Storage::open_dir(&dir).unwrap();
    let server = TestServer::start(
        AgentServer::new()
            .agent("Counter", |_| CounterV2)
            .storage(storage),
    )
    .await;
    let mut c = server.connect("/agents/counter/old").await;
    assert_eq!(c.handshake().await.1, Some(json!({"count": 5})));
    assert_eq!(
        stored_row(&dir, "counter", "old").as_deref(),
        Some(r#"{"cnt":5}"#)
    );
    c.send(r#"{"type":"rpc","id":"1","method":"add","args":[1]}"#)
        .await;
    assert_eq!(c.json().await["state"], json!({"count": 6}));
    assert_eq!(c.json().await["result"], 6);
    assert_eq!(
        stored_row(&dir, "counter", "old").as_deref(),
        Some(r#"{"count":6}"#)
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backend that holds every batch until the test lets it through, and
/// records the states it is given (through the default
/// `submit_with_state`, as any backend that implements only `submit`).
struct Held {
    inner: Storage,
    open: AtomicBool,
    batches: Mutex<Vec<(InstanceId, Vec<Write>, Done)>>,
    states: Mutex<Vec<Vec<String>>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl Default for Held {
    fn default() -> Self {
        Held {
            inner: Storage::in_memory(),
            open: AtomicBool::new(false),
            batches: Mutex::default(),
            states: Mutex::default(),
        }
    }
}

impl Held {
    /// Lets every held batch through, and the next ones too.
    fn release(&self) {
        self.open.store(true, Ordering::SeqCst);
        for (id, writes, done) in self.batches.lock().unwrap().drain(..) {
            self.inner.backend().submit(&id, writes, done);
        }
    }
}

/// The backend side of [`Held`] (the test keeps the other).
#[derive(Debug)]
struct HeldBackend(Arc<Held>);

impl std::ops::Deref for HeldBackend {
    type Target = Held;

    fn deref(&self) -> &Held {
        &self.0
    }
}

impl Backend for HeldBackend {
    fn load_state(&self, id: &InstanceId) -> BoxFuture<Result<Option<String>, StorageError>> {
        self.inner.backend().load_state(id)
    }

    fn submit(&self, id: &InstanceId, writes: Vec<Write>, done: Done) {
        let states = writes.iter().filter_map(|w| match w {
            Write::State(json) => Some(json.clone()),
            _ => None,
        });
        self.states.lock().unwrap().push(states.collect());
        if self.open.load(Ordering::SeqCst) {
            return self.inner.backend().submit(id, writes, done);
        }
        self.batches
            .lock()
            .unwrap()
            .push((id.clone(), writes, done));
    }

    fn reset(&self, id: &InstanceId) {
        self.inner.backend().reset(id);
    }

    fn get(&self, id: &InstanceId, key: &str) -> BoxFuture<Result<Option<String>, StorageError>> {
        self.inner.backend().get(id, key)
    }

    fn keys(&self, id: &InstanceId, prefix: &str) -> BoxFuture<Result<Vec<String>, StorageError>> {
        self.inner.backend().keys(id, prefix)
    }

    fn sql(&self, id: &InstanceId, job: SqlJob) -> BoxFuture<Result<(), StorageError>> {
        self.inner.backend().sql(id, job)
    }

    fn flush(&self) -> BoxFuture<()> {
        self.inner.backend().flush()
    }
}

/// Output after a write is released only once the write is durable, while
/// the instance goes on handling input.
#[tokio::test]
async fn a_reply_is_never_seen_before_its_write_is_durable() {
    let held = Arc::new(Held::default());
    let log = Log::default();
    let server = TestServer::start(
        server_with_probe(&log).storage(Storage::from_backend(HeldBackend(held.clone()))),
    )
    .await;
    let mut a = server.connect("/agents/probe-agent/gate?_pk=a").await;
    a.handshake().await;
    a.send("remember:kept").await;
    a.send("recall").await;
    // The instance handled both (the second read its own pending write)…
    wait_for(&log, "message recall").await;
    // …and the reply can only reach the client once the write is let through.
    let releaser = {
        let held = held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            held.release();
        })
    };
    assert_eq!(a.text().await, "kept");
    assert!(
        held.open.load(Ordering::SeqCst),
        "the reply arrived before its write was durable"
    );
    releaser.await.unwrap();
}

/// An agent that fills its state on request, on a database that can be
/// made to run out of room.
struct Disk;

impl Agent for Disk {
    type State = String;

    fn initial_state(&self) -> Option<String> {
        Some("small".into())
    }

    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        match call.method() {
            // The database may grow by only a few pages from here on.
            "limit" => {
                cx.storage()
                    .with_sql(|db| {
                        let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                        db.pragma_update(None, "max_page_count", pages + 2)
                    })
                    .await?;
                Reply::none()
            }
            "fill" => {
                let (n,): (usize,) = call.args()?;
                cx.set_state("f".repeat(n))?;
                Reply::json(&n)
            }
            "read" => Reply::json(&cx.state().map_or(0, String::len)),
            _ => Err(RpcError::NoSuchMethod),
        }
    }

    async fn on_error(
        &mut self,
        cx: &mut AgentContext<Self>,
        _conn: Option<&agents_server::Connection>,
        error: HookError,
    ) {
        if matches!(error, HookError::Storage(_)) {
            for conn in cx.connections() {
                let _ = conn.send(format!("agent saw: {error}"));
            }
        }
    }
}

/// Disk full: the call's reply is an error, the state broadcast never
/// happens, the agent hears of it, and memory returns to what is on disk.
#[tokio::test]
async fn a_failed_write_is_an_error_and_nothing_diverges() {
    let server = TestServer::start(AgentServer::new().agent("Disk", |_| Disk)).await;
    let mut a = server.connect("/agents/disk/full?_pk=a").await;
    let mut b = server.connect("/agents/disk/full?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    let call = |id: &str, method: &str, args: serde_json::Value| {
        json!({"type":"rpc","id":id,"method":method,"args":args}).to_string()
    };
    a.send(&call("1", "limit", json!([]))).await;
    assert_eq!(a.json().await["success"], true);
    a.send(&call("2", "fill", json!([200_000]))).await;
    let reply = a.json().await;
    assert_eq!(reply["id"], "2");
    assert_eq!(reply["success"], false, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.starts_with("storage error: write failed:"), "{error}");
    assert!(error.contains("full"), "{error}");
    assert!(a
        .text()
        .await
        .starts_with("agent saw: storage error: write failed"));
    // b never saw the lost state; it hears of the failure only.
    assert!(b
        .text()
        .await
        .starts_with("agent saw: storage error: write failed"));
    b.sentinel().await;
    // In memory it is back to what is stored.
    a.send(&call("3", "read", json!([]))).await;
    assert_eq!(a.json().await["result"], 5);
    let mut c = server.connect("/agents/disk/full?_pk=c").await;
    assert_eq!(c.handshake().await.1, Some(json!("small")));
    // Writes that fit go through again.
    a.send(&call("4", "fill", json!([10]))).await;
    assert_eq!(a.json().await["state"], json!("ffffffffff"));
    assert_eq!(a.json().await["result"], 10);
}

/// An agent whose SQL calls its own storage API.
struct Sql;

impl Agent for Sql {
    type State = ();

    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        _call: &mut Call,
    ) -> Result<Reply, RpcError> {
        cx.storage().put("before", &1)?;
        let kv = cx.storage().clone();
        let rt = tokio::runtime::Handle::current();
        let got = cx
            .storage()
            .with_sql(move |db| {
                db.execute_batch(
                    "CREATE TABLE IF NOT EXISTS t (x INTEGER); INSERT INTO t VALUES (7);",
                )?;
                // Storage calls from inside run inline: no deadlock.
                let before: Option<i64> = rt.block_on(kv.get("before")).unwrap();
                kv.put("inside", &2).unwrap();
                let keys = rt.block_on(kv.keys("")).unwrap();
                let x: i64 = db.query_row("SELECT x FROM t", [], |r| r.get(0))?;
                Ok((before, keys, x))
            })
            .await?;
        Reply::json(&got)
    }
}

/// `with_sql` returns whatever its closure calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sql_calling_storage_returns() {
    let server = TestServer::start(AgentServer::new().agent("Sql", |_| Sql)).await;
    let mut c = server.connect("/agents/sql/x").await;
    c.handshake().await;
    c.send(r#"{"type":"rpc","id":"1","method":"go","args":[]}"#)
        .await;
    let reply = tokio::time::timeout(WAIT, c.json())
        .await
        .expect("with_sql deadlocked");
    assert_eq!(
        reply["result"],
        json!([1, ["before", "inside"], 7]),
        "{reply}"
    );
}

/// A counter that writes big states back to back.
struct Fill;

impl Agent for Fill {
    type State = String;

    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        let (i,): (u8,) = call.args()?;
        // Different bytes each time (SQLite skips rewriting equal pages).
        cx.set_state(char::from(b'a' + i % 26).to_string().repeat(1 << 20))?;
        Reply::none()
    }
}

/// The WAL grows during a burst of writes that a long reader keeps from
/// being checkpointed, and shrinks back to its limit once that ends.
#[tokio::test]
async fn the_wal_shrinks_back_after_a_burst() {
    let dir = temp_dir("wal");
    let storage = Storage::open_dir(&dir).unwrap();
    let server =
        TestServer::start(AgentServer::new().agent("Fill", |_| Fill).storage(storage)).await;
    let mut c = server.connect("/agents/fill/burst").await;
    c.handshake().await;
    async fn fill(c: &mut Client, i: u8) {
        c.send(&format!(
            r#"{{"type":"rpc","id":"{i}","method":"fill","args":[{i}]}}"#
        ))
        .await;
        c.json().await; // the state broadcast
        assert_eq!(c.json().await["success"], true);
    }
    // A reader holding a snapshot: checkpoints cannot get past it.
    let reader =
        rusqlite::Connection::open(dir.join(agents_server::storage::DATABASE_FILE)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM cf_agents_state", [], |r| r.get(0))
        .unwrap();
    for i in 0..24 {
        fill(&mut c, i).await;
    }
    let wal = dir.join(format!("{}-wal", agents_server::storage::DATABASE_FILE));
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(
        grown > 16 << 20,
        "the burst did not grow the WAL ({grown} bytes)"
    );
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    fill(&mut c, 24).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size <= 16 << 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the WAL stayed at {size} bytes (it was {grown})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same with a client's large state (parsed and encoded off the hot
/// path): the sender's update is refused once the write fails, the others
/// never see it, and a state that fits is stored again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_state_that_cannot_be_stored_is_refused() {
    let server = TestServer::start(AgentServer::new().agent("Disk", |_| Disk)).await;
    let mut a = server.connect("/agents/disk/client-full?_pk=a").await;
    let mut b = server.connect("/agents/disk/client-full?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send(&json!({"type":"rpc","id":"1","method":"limit","args":[]}).to_string())
        .await;
    assert_eq!(a.json().await["success"], true);
    let big = "f".repeat(agents_server::LARGE_JSON * 3);
    a.send(&json!({"type":"cf_agent_state","state":big}).to_string())
        .await;
    let reply = a.json().await;
    assert_eq!(reply["type"], "cf_agent_state_error", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.starts_with("State update rejected: storage error: write failed:"),
        "{error}"
    );
    assert!(b
        .text()
        .await
        .starts_with("agent saw: storage error: write failed"));
    b.sentinel().await;
    let mut c = server.connect("/agents/disk/client-full?_pk=c").await;
    assert_eq!(c.handshake().await.1, Some(json!("small")));
    a.send(&json!({"type":"cf_agent_state","state":"fits"}).to_string())
        .await;
    assert_eq!(b.json().await["state"], "fits");
}

/// Sets its state twice in one hook.
struct Twice;

impl Agent for Twice {
    type State = serde_json::Value;

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        _conn: &agents_server::Connection,
        message: agents_server::Message,
    ) -> Result<(), BoxError> {
        let text = message.as_text().unwrap_or_default();
        cx.set_state(json!({"first": text}))?;
        cx.set_state(json!({"last": text}))?;
        Ok(())
    }
}

/// A turn's states become one write: its last state, exactly as
/// broadcast; a client's state is written as the frame the others get.
#[tokio::test]
async fn a_turn_writes_its_last_state_once() {
    let held = Arc::new(Held {
        open: AtomicBool::new(true),
        ..Held::default()
    });
    let states = &held.states;
    let server = TestServer::start(
        AgentServer::new()
            .agent("Twice", |_| Twice)
            .storage(Storage::from_backend(HeldBackend(held.clone()))),
    )
    .await;
    let mut a = server.connect("/agents/twice/t?_pk=a").await;
    let mut b = server.connect("/agents/twice/t?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send("x").await;
    // Every change is broadcast…
    assert_eq!(b.json().await["state"], json!({"first": "x"}));
    assert_eq!(b.json().await["state"], json!({"last": "x"}));
    // …and the batch holds the last one only.
    b.sentinel().await;
    let written: Vec<Vec<String>> = states.lock().unwrap().drain(..).collect();
    assert_eq!(written, [vec![r#"{"last":"x"}"#.to_owned()]]);
    // A client's state, large or small, is stored as the others got it.
    for fill in [3, agents_server::LARGE_JSON * 2] {
        let state = json!({"z": 1, "a": "q".repeat(fill)});
        a.send(&json!({"state": state, "type": "cf_agent_state"}).to_string())
            .await;
        let frame = b.text().await;
        let json = frame
            .strip_prefix(agents_server::protocol::STATE_FRAME_PREFIX)
            .and_then(|f| f.strip_suffix('}'))
            .unwrap();
        b.sentinel().await;
        let written: Vec<Vec<String>> = states.lock().unwrap().drain(..).collect();
        assert_eq!(written, [vec![json.to_owned()]]);
    }
    let mut c = server.connect("/agents/twice/t?_pk=c").await;
    assert_eq!(c.handshake().await.1.unwrap()["z"], 1);
}
