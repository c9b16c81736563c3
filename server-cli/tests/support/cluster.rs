//! The cluster harness shared by the cluster tests and the cluster
//! benchmark: a real nats-server with JetStream in a temporary directory,
//! `agents-server --nats` nodes with admin listeners, and small RPC helpers.
//! Included with `#[path]` next to `server/tests/util.rs` (as `util`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::util::{http_get, Client, WAIT};

/// Lease TTL of the test nodes, in seconds.
pub(crate) const TTL: u64 = 2;

/// Whether the test nodes listen for direct connections from each other
/// (so that forwarded frames skip NATS), as recommended: unless
/// `AGENTS_TEST_FRAMES=nats`, with which every frame crosses NATS
/// (`./scripts/test.sh` runs the suite both ways).
pub(crate) fn direct() -> bool {
    std::env::var("AGENTS_TEST_FRAMES").as_deref() != Ok("nats")
}

/// How long a failover may take in these tests (TTL + the client's retries,
/// with room for a loaded machine).
pub(crate) const FAILOVER: Duration = Duration::from_secs(20);

/// A nats-server with JetStream in a temporary directory.
pub(crate) struct Nats {
    pub(crate) child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nats {
    pub(crate) async fn start(what: &str) -> Nats {
        let dir =
            std::env::temp_dir().join(format!("agents-rs-nats-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (child, port) = Self::spawn(&dir, None).await;
        Nats { child, dir, port }
    }

    /// Spawns the server (on `port`, or a free one) and waits until JetStream is up.
    async fn spawn(dir: &std::path::Path, port: Option<u16>) -> (Child, u16) {
        let bin = std::env::var("NATS_SERVER")
            .expect("NATS_SERVER is not set: ./scripts/test.sh installs nats-server and sets it");
        for f in std::fs::read_dir(dir).unwrap().flatten() {
            if f.file_name().to_string_lossy().ends_with(".ports") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        // States up to max_state_bytes (2 MiB) need more than NATS's 1 MB default.
        let config = dir.join("nats.conf");
        std::fs::write(&config, "max_payload: 8MB\n").unwrap();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-m", "-1"])
            .arg("-c")
            .arg(&config)
            .arg("-sd")
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let ports = dir.join(format!("nats-server_{pid}.ports"));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    let url = v["nats"][0].as_str().unwrap();
                    let http = v["monitoring"][0].as_str().unwrap();
                    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
                    let monitor: SocketAddr = http.trim_start_matches("http://").parse().unwrap();
                    if http_get(monitor, "/healthz?js-enabled-only=true", &[])
                        .await
                        .0
                        == 200
                    {
                        return (child, port);
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    pub(crate) async fn restart(&mut self) {
        let (child, _) = Self::spawn(&self.dir, Some(self.port)).await;
        self.child = child;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `agents-server --nats` node with an admin listener.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Node {
    pub(crate) async fn start(nats: &str) -> Node {
        Self::start_with_ttl(nats, TTL).await
    }

    pub(crate) async fn start_with_ttl(nats: &str, ttl: u64) -> Node {
        let ttl = ttl.to_string();
        let mut args = vec!["--nats", nats, "--lease-ttl", &ttl];
        if direct() {
            args.extend(["--direct-addr", "127.0.0.1:0"]);
        }
        Self::start_with(&args).await
    }

    /// Starts `agents-server` on free ports with an admin listener and `args`.
    pub(crate) async fn start_with(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agents-server"))
            .args([
                "--port",
                "0",
                "--log",
                "warn",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("the node did not start")
                .unwrap()
                .expect("the node exited");
            addrs.push(
                line.rsplit("http://")
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<SocketAddr>()
                    .unwrap(),
            );
        }
        Node {
            child,
            addr: addrs[0],
            admin: addrs[1],
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Whether this node runs the instance of `agent` right now (its metrics say so).
    pub(crate) async fn runs(&self, agent: &str) -> bool {
        let sample = format!("agents_instances{{agent=\"{agent}\"}}");
        self.metric(&sample).await.is_some_and(|v| v > 0.0)
    }

    /// How many links to owner nodes this node set up whose frames travel
    /// `via` (`direct` or `nats`), from its metrics.
    pub(crate) async fn links_via(&self, via: &str) -> f64 {
        let sample = format!("agents_cluster_links_total{{via=\"{via}\"}}");
        self.metric(&sample).await.unwrap_or(0.0)
    }

    /// The value of one sample (name and labels, as written) of this
    /// node's metrics; `None` when it has none, or no metrics answered.
    async fn metric(&self, sample: &str) -> Option<f64> {
        let (status, text) = http_get(self.admin, "/metrics", &[]).await;
        let prefix = format!("{sample} ");
        (status == 200)
            .then(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            })
            .flatten()
    }

    /// Sends `signal` (`kill -<signal>`); for `STOP`, returns only once
    /// every thread of the node is stopped (the signal takes effect
    /// asynchronously: a frame sent right after could still be handled).
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
        if signal != "STOP" {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(Result::ok)
                .all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    // The state follows the command name, which ends with ')'.
                    stat.rsplit(')')
                        .next()
                        .map(str::trim_start)
                        .is_some_and(|rest| rest.starts_with('T'))
                });
            if stopped {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {pid} did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

pub(crate) async fn cluster(what: &str, n: usize) -> (Nats, Vec<Node>) {
    let nats = Nats::start(what).await;
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(&nats.url()).await);
    }
    (nats, nodes)
}

pub(crate) fn rpc(id: &str, method: &str, args: Value) -> String {
    json!({"type":"rpc","id":id,"method":method,"args":args}).to_string()
}

/// Reads frames until the RPC reply with `id`.
pub(crate) async fn reply(c: &mut Client, id: &str) -> Value {
    loop {
        let frame = c.json().await;
        if frame["type"] == "rpc" && frame["id"] == id && frame["done"] != false {
            return frame;
        }
    }
}

/// Calls `increment(by)` on a fresh socket to `url`: the new count, or
/// `None` when the socket could not be had or was closed first (a node or
/// an owner on its way out).
pub(crate) async fn try_increment(url: &str, by: u64) -> Option<u64> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    futures_util::SinkExt::send(&mut ws, Ws::text(rpc("try", "increment", json!([by]))))
        .await
        .ok()?;
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(Ws::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).ok()?;
                    if v["type"] == "rpc" && v["id"] == "try" {
                        return v["result"].as_u64();
                    }
                }
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()?
}
