//! Cluster figures for `docs/benchmarks.md`: echo through a node that does
//! not own the instance against echo on its owner (50 sockets, and one
//! socket for the latency of the hop itself), `increment` in cluster
//! mode against a durable single node, and failover time over repeated
//! `kill -9` of the owner. A real nats-server (`NATS_SERVER`, as for the
//! cluster tests) and release nodes, all on 127.0.0.1; bounded in count and
//! time. Prints one JSON line per run and a summary table.
//!
//! Echo is also measured against the machine's limit, from `agents-bench`
//! (built first, below): its bare WebSocket server for direct echo, and
//! the same server relaying each message through the same nats-server to
//! a bare NATS echo for forwarded echo — no sequence numbers, flow control,
//! actor or queues, one subscription per process — and relaying over one
//! TCP connection straight to a bare TCP echo instead (forwarding without
//! a broker in between).
//!
//! ```text
//! cargo build --release -p agents-bench --locked
//! NATS_SERVER=… cargo bench -p agents-server-cli --features cluster-tests --bench cluster \
//!     -- [--only echo,rpc,failover] [--rounds 3] [--kills 20] [--ttl 5]
//! ```
//!
//! Every pair of figures compared in a ratio comes from the same round,
//! seconds apart; absolute figures move ±30 % between runs on this machine.

#![allow(missing_docs)]

#[allow(unused_imports)]
#[path = "../../server/tests/util.rs"]
mod util;

#[allow(dead_code)]
#[path = "../tests/support/cluster.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Ws;

use support::{rpc, try_increment, Nats, Node};

/// Longest any single measured run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Longest a failover may take before the run counts it as failed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Cluster-mode figures (127.0.0.1 only)")]
struct Args {
    /// Comma-separated parts: echo, rpc, failover.
    #[arg(long, default_value = "echo,rpc,failover")]
    only: String,
    /// Rounds of each comparison (each round measures both sides).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Comma-separated kinds of echo run: saturated, one (one socket),
    /// paced.
    #[arg(long, default_value = "saturated,one,paced")]
    kinds: String,
    /// Sockets on the one instance (echo and rpc).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Echo round trips per socket per run (one in flight per socket).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Echo round trips of the one-socket run (latency without queueing).
    #[arg(long, default_value_t = 3000)]
    latency_messages: usize,
    /// Round trips per second of each socket in the paced echo run (latency
    /// at a load both sides carry, not at saturation).
    #[arg(long, default_value_t = 50)]
    paced_rate: u32,
    /// Round trips per socket of the paced echo run.
    #[arg(long, default_value_t = 150)]
    paced_messages: usize,
    /// Echo message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// `increment` calls per socket per run (one in flight per socket).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// `kill -9` runs for the failover figure.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Lease TTL of the nodes, in seconds (the server's default is 5).
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one measured run saw.
#[derive(Debug, Clone)]
struct Run {
    /// Operations (round trips or calls) per second, all sockets together.
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of every server process (nodes and NATS) per operation.
    cpu_us: f64,
    /// Context switches of the server processes' threads per operation
    /// (each is a thread that slept and was woken, or was preempted).
    switches: f64,
    /// Time the server processes' threads waited to run (runnable, but
    /// the CPUs were busy) per operation, in µs.
    waited_us: f64,
    /// Every operation's latency, sorted.
    latencies: Vec<Duration>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::env::var("NATS_SERVER")
        .context("NATS_SERVER is not set (./scripts/test.sh installs nats-server)")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let mut summary = Vec::new();
    for part in args.only.split(',').map(str::trim) {
        match part {
            "echo" => summary.extend(echo(&args).await?),
            "rpc" => summary.extend(increment(&args).await?),
            "failover" => summary.extend(failover(&args).await?),
            other => bail!("unknown part {other} (echo, rpc, failover)"),
        }
    }
    println!("\n{:<58} {:>14}", "figure", "value");
    for (name, value) in summary {
        println!("{name:<58} {value:>14}");
    }
    Ok(())
}

/// Echo on one instance: sockets on its owner (direct) against sockets on
/// another node, whose frames go over the direct connection between the
/// nodes (`--direct-addr`) or, between nodes without it, through NATS; and
/// the same through the machine's limit (bare direct, bare relayed through
/// NATS, bare relayed over TCP), in turn, `--rounds` times.
async fn echo(args: &Args) -> Result<Vec<(String, String)>> {
    let nats = Nats::start("bench-echo").await;
    let (url, ttl) = (nats.url(), args.ttl.to_string());
    let node = |direct: bool| {
        let mut node_args = vec!["--nats", &url, "--lease-ttl", &ttl];
        if direct {
            node_args.extend(["--direct-addr", "127.0.0.1:0"]);
        }
        async move { Node::start_with(&node_args).await }
    };
    // Instance `bench` on node 0, reached directly from node 1; instance
    // `bench-nats` on node 2, reached through NATS from node 3.
    let nodes = [
        node(true).await,
        node(true).await,
        node(false).await,
        node(false).await,
    ];
    let (path, nats_path) = ("/agents/echo-agent/bench", "/agents/echo-agent/bench-nats");
    // Held open throughout, so that the instances live where said.
    let mut anchors = Vec::new();
    for (node, path) in [(&nodes[0], path), (&nodes[2], nats_path)] {
        let mut anchor = util::Client::connect(&node.url(path)).await;
        anchor.handshake().await;
        anchors.push(anchor);
    }
    let pids = pids(&nats, &nodes);
    let bare = Bare::start(&nats).await?;
    let nats_pid = nats.child.id().context("nats-server exited")?;
    // Each side: its label, its URL, and the processes whose CPU counts.
    let sides = [
        ("direct", nodes[0].url(path), pids.clone()),
        ("forwarded", nodes[1].url(path), pids.clone()),
        ("forwarded through NATS", nodes[3].url(nats_path), pids),
        (
            "limit, direct",
            format!("ws://{}{path}", bare.direct_addr),
            vec![bare.pid(0)?],
        ),
        (
            "limit, through NATS",
            format!("ws://{}{path}", bare.relay_addr),
            vec![bare.pid(1)?, bare.pid(2)?, nats_pid],
        ),
        (
            "limit, over TCP",
            format!("ws://{}{path}", bare.tcp_relay_addr),
            vec![bare.pid(3)?, bare.pid(4)?],
        ),
    ];
    // Which side each is compared with (its "direct").
    let base = [0, 0, 0, 3, 3, 3];
    let n = args.connections;
    let every = Duration::from_secs(1) / args.paced_rate.max(1);
    // Each kind of run: its name, its load (for the latency row), sockets,
    // round trips per socket, and the pace (none: back to back).
    let wanted: Vec<&str> = args.kinds.split(',').map(str::trim).collect();
    let kinds: Vec<_> = [
        (
            "saturated",
            "echo",
            format!("{n} sockets, saturated"),
            n,
            args.messages,
            None,
        ),
        (
            "one",
            "echo, one socket",
            "1 socket".to_owned(),
            1,
            args.latency_messages,
            None,
        ),
        (
            "paced",
            "echo, paced",
            format!("{n} sockets at {}/s each", args.paced_rate),
            n,
            args.paced_messages,
            Some(every),
        ),
    ]
    .into_iter()
    .filter(|(name, ..)| wanted.contains(name))
    .map(|(_, part, load, sockets, messages, pace)| (part, load, sockets, messages, pace))
    .collect();
    anyhow::ensure!(
        !kinds.is_empty(),
        "no echo kind in --kinds {} (saturated, one, paced)",
        args.kinds
    );
    // Per kind, per side: the runs.
    let mut runs: Vec<Vec<Vec<Run>>> = kinds
        .iter()
        .map(|_| vec![Vec::new(); sides.len()])
        .collect();
    for round in 1..=args.rounds {
        // Alternate which side goes first.
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for side in order {
            let (label, url, pids) = &sides[side];
            for ((part, _, sockets, messages, pace), runs) in kinds.iter().zip(&mut runs) {
                let run = echo_run(args, url, *sockets, *messages, *pace, pids);
                let run = timed(run).await?;
                report(part, label, round, &run);
                runs[side].push(run);
            }
        }
    }
    for anchor in &mut anchors {
        anchor.close(1000, "").await;
    }
    let mut out = Vec::new();
    for ((part, ..), runs) in kinds.iter().zip(&runs) {
        for (side, (label, ..)) in sides.iter().enumerate() {
            if base[side] == side {
                continue;
            }
            let (b, (base_label, ..)) = (base[side], &sides[base[side]]);
            let rows = compare(part, base_label, &runs[b], label, &runs[side]);
            // Each base's own row once.
            let skip = usize::from(side != b + 1);
            out.extend(rows.into_iter().skip(skip));
        }
    }
    for ((_, load, ..), runs) in kinds.iter().zip(&runs) {
        for (side, (label, ..)) in sides.iter().enumerate() {
            let b = base[side];
            if b == side {
                continue;
            }
            let (f, d) = (&runs[side], &runs[b]);
            out.push((
                format!(
                    "echo: added latency p50 / p99, {load}, {label} − {}",
                    sides[b].0
                ),
                format!(
                    "{:+.0} / {:+.0} µs",
                    median(pair(f, d, |f, d| f.p50_us - d.p50_us)),
                    median(pair(f, d, |f, d| f.p99_us - d.p99_us))
                ),
            ));
            // Every round's samples together: a hiccup of the machine in
            // one round weighs as much on both sides.
            out.push((
                format!(
                    "echo: added latency p50 / p99 pooled over rounds, {load}, {label} − {}",
                    sides[b].0
                ),
                format!(
                    "{:+.0} / {:+.0} µs",
                    pooled(f, 0.5) - pooled(d, 0.5),
                    pooled(f, 0.99) - pooled(d, 0.99)
                ),
            ));
        }
    }
    Ok(out)
}

/// The machine's limit for echo, from `agents-bench`: its bare WebSocket
/// server, the same relaying through NATS to a bare NATS echo, and
/// relaying over TCP to a bare TCP echo (killed on drop).
struct Bare {
    children: Vec<tokio::process::Child>,
    direct_addr: String,
    relay_addr: String,
    tcp_relay_addr: String,
}

impl Bare {
    async fn start(nats: &Nats) -> Result<Bare> {
        // `target/release/deps/cluster-…` → `target/release/agents-bench`.
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .and_then(std::path::Path::parent)
            .context("no target directory")?
            .join("agents-bench");
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: cargo build --release -p agents-bench --locked",
            bin.display()
        );
        let url = nats.url();
        let mut children = Vec::new();
        let mut lines: Vec<String> = Vec::new();
        let addr = |line: &str| {
            line.rsplit("http://")
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        for i in 0..5 {
            let tcp = match i {
                4 => format!("tcp://{}", addr(&lines[3])),
                _ => String::new(),
            };
            let args = match i {
                0 => vec!["--nats-echo", &url],
                1 => vec!["--serve-limit", "--port", "0"],
                2 => vec!["--serve-limit", "--port", "0", "--relay", &url],
                3 => vec!["--tcp-echo", "0"],
                _ => vec!["--serve-limit", "--port", "0", "--relay", &tcp],
            };
            let mut child = tokio::process::Command::new(&bin)
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let out = child.stdout.take().context("no stdout")?;
            let mut out = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
            let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
                .await
                .context("agents-bench did not start")??
                .context("agents-bench exited")?;
            lines.push(line);
            children.push(child);
        }
        Ok(Bare {
            direct_addr: addr(&lines[1]),
            relay_addr: addr(&lines[2]),
            tcp_relay_addr: addr(&lines[4]),
            children,
        })
    }

    /// 0: the bare server, 1: the one relaying through NATS, 2: the NATS
    /// echo, 3: the one relaying over TCP, 4: the TCP echo.
    fn pid(&self, which: usize) -> Result<u32> {
        let child = [1, 2, 0, 4, 3][which];
        self.children[child].id().context("agents-bench exited")
    }
}

/// One echo run: `connections` sockets, each `messages` round trips, one
/// in flight per socket: back to back, or one every `every` (sockets
/// spread evenly over the interval; a late reply delays only that
/// socket's next send).
async fn echo_run(
    args: &Args,
    url: &str,
    connections: usize,
    messages: usize,
    every: Option<Duration>,
    pids: &[u32],
) -> Result<Run> {
    let mut sockets = Vec::new();
    for i in 0..connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        // Warm up: the first echo of our own text follows the connect frames.
        let hello = format!("hello {i}");
        ws.send(Ws::text(hello.clone())).await?;
        while next_text(&mut ws).await? != hello {}
        sockets.push(ws);
    }
    let payload = "x".repeat(args.size);
    measure(pids, sockets.len() * messages, || {
        let start = tokio::time::Instant::now();
        let count = sockets.len() as u32;
        sockets
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| {
                let payload = payload.clone();
                async move {
                    let mut latencies = Vec::with_capacity(messages);
                    for k in 0..messages {
                        if let Some(every) = every {
                            let phase = every * i as u32 / count;
                            tokio::time::sleep_until(start + phase + every * k as u32).await;
                        }
                        let sent = Instant::now();
                        ws.send(Ws::text(payload.clone())).await?;
                        while next_text(&mut ws).await? != payload {}
                        latencies.push(sent.elapsed());
                    }
                    let _ = ws.close(None).await;
                    Ok(latencies)
                }
            })
            .collect()
    })
    .await
}

/// `increment` on one counter: 3 nodes with sockets on the owner, the same
/// with sockets spread over all three nodes, and a single durable node
/// (`--data-dir`, no NATS), alternating, `--rounds` times.
async fn increment(args: &Args) -> Result<Vec<(String, String)>> {
    let nats = Nats::start("bench-rpc").await;
    let nodes = [
        Node::start_with_ttl(&nats.url(), args.ttl).await,
        Node::start_with_ttl(&nats.url(), args.ttl).await,
        Node::start_with_ttl(&nats.url(), args.ttl).await,
    ];
    let dir = std::env::temp_dir().join(format!("agents-rs-bench-rpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let single = Node::start_with(&["--data-dir", &dir.to_string_lossy()]).await;
    let path = "/agents/counter-agent/bench";
    let mut anchors = Vec::new();
    for node in [&nodes[0], &single] {
        let mut anchor = util::Client::connect(&node.url(path)).await;
        anchor.handshake().await;
        anchors.push(anchor);
    }
    let cluster_pids = pids(&nats, &nodes);
    let single_pids = [single.child.id().context("no pid")?];
    let owner = [nodes[0].url(path)];
    let spread: Vec<String> = nodes.iter().map(|n| n.url(path)).collect();
    let alone = [single.url(path)];
    let sides: [(&str, &[String], &[u32]); 3] = [
        ("single durable", &alone, &single_pids),
        ("cluster, on owner", &owner, &cluster_pids),
        ("cluster, spread", &spread, &cluster_pids),
    ];
    let mut figures: [Vec<Run>; 3] = Default::default();
    for round in 1..=args.rounds {
        for k in 0..sides.len() {
            let i = (k + round) % sides.len();
            let (label, urls, pids) = sides[i];
            let run = timed(rpc_run(args, urls, pids)).await?;
            report("rpc", label, round, &run);
            figures[i].push(run);
        }
    }
    for mut anchor in anchors {
        anchor.close(1000, "").await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = compare("rpc", sides[0].0, &figures[0], sides[1].0, &figures[1]);
    out.extend(compare(
        "rpc",
        sides[0].0,
        &figures[0],
        sides[2].0,
        &figures[2],
    ));
    Ok(out)
}

/// One `increment` run: `--connections` sockets spread over `urls`, each
/// `--calls` calls one after the other.
async fn rpc_run(args: &Args, urls: &[String], pids: &[u32]) -> Result<Run> {
    let mut sockets = Vec::new();
    for i in 0..args.connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(&urls[i % urls.len()]).await?;
        call(&mut ws, "warm", 0).await?;
        sockets.push(ws);
    }
    let calls = args.calls;
    measure(pids, sockets.len() * calls, || {
        sockets
            .into_iter()
            .map(|mut ws| async move {
                let mut latencies = Vec::with_capacity(calls);
                for n in 0..calls {
                    let sent = Instant::now();
                    call(&mut ws, &n.to_string(), 1).await?;
                    latencies.push(sent.elapsed());
                }
                let _ = ws.close(None).await;
                Ok(latencies)
            })
            .collect()
    })
    .await
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Calls `increment(by)` and waits for its reply (state broadcasts skipped).
async fn call(ws: &mut Socket, id: &str, by: u64) -> Result<u64> {
    ws.send(Ws::text(rpc(id, "increment", json!([by])))).await?;
    loop {
        let v: Value = serde_json::from_str(&next_text(ws).await?)?;
        if v["type"] == "rpc" && v["id"] == id {
            return v["result"]
                .as_u64()
                .with_context(|| format!("increment failed: {v}"));
        }
    }
}

async fn next_text(ws: &mut Socket) -> Result<String> {
    loop {
        match ws.next().await.context("the socket ended")?? {
            Ws::Text(t) => return Ok(t.as_str().to_owned()),
            Ws::Close(f) => bail!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Runs the per-socket loops together; `ops` operations in all.
async fn measure<F, Fut>(pids: &[u32], ops: usize, loops: F) -> Result<Run>
where
    F: FnOnce() -> Vec<Fut>,
    Fut: std::future::Future<Output = Result<Vec<Duration>>>,
{
    let cpu_before = cpu(pids)?;
    let sched_before = sched(pids);
    let started = Instant::now();
    let results = futures_util::future::join_all(loops()).await;
    let elapsed = started.elapsed();
    let cpu_after = cpu(pids)?;
    let sched_after = sched(pids);
    let mut latencies = Vec::with_capacity(ops);
    for r in results {
        latencies.extend(r?);
    }
    latencies.sort_unstable();
    Ok(Run {
        per_sec: ops as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        cpu_us: (cpu_after - cpu_before).as_secs_f64() * 1e6 / ops as f64,
        switches: (sched_after.switches - sched_before.switches) as f64 / ops as f64,
        waited_us: (sched_after.waited_ns - sched_before.waited_ns) as f64 / 1e3 / ops as f64,
        latencies,
    })
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(RUN_LIMIT, f)
        .await
        .context("a run exceeded its time limit")?
}

/// `kill -9` of the owner, `--kills` times, with a client calling
/// `increment` through another node: the time until that client's first
/// successful call on a new socket, and until its node closed it (1012).
async fn failover(args: &Args) -> Result<Vec<(String, String)>> {
    let nats = Nats::start("bench-failover").await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start_with_ttl(&nats.url(), args.ttl).await);
    }
    let path = "/agents/counter-agent/failover";
    let (mut served, mut noticed) = (Vec::new(), Vec::new());
    for kill in 1..=args.kills {
        // Served, and on which node.
        let deadline = Instant::now() + FAILOVER_LIMIT;
        let owner = loop {
            if try_increment(&nodes[kill % 3].url(path), 0).await.is_some() {
                let mut owner = None;
                for (i, node) in nodes.iter().enumerate() {
                    if node.runs("counter-agent").await {
                        owner = Some(i);
                    }
                }
                if let Some(i) = owner {
                    break i;
                }
            }
            if Instant::now() > deadline {
                bail!("kill {kill}: the counter is not served");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let urls: Vec<String> = (1..=3).map(|j| nodes[(owner + j) % 3].url(path)).collect();
        let log = Arc::new(Mutex::new(CallerLog::default()));
        let caller = tokio::spawn(keep_calling(urls, log.clone()));
        // Until the caller is served through its node, then a moment more.
        let deadline = Instant::now() + FAILOVER_LIMIT;
        while log.lock().unwrap().acks.is_empty() {
            if Instant::now() > deadline {
                bail!("kill {kill}: the caller was never served");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let generation = log.lock().unwrap().generation;
        let killed = Instant::now();
        nodes[owner].child.start_kill()?;
        let deadline = killed + FAILOVER_LIMIT;
        let (back, closed) = loop {
            {
                let log = log.lock().unwrap();
                let back = log
                    .acks
                    .iter()
                    .find(|(at, g)| *at > killed && *g > generation)
                    .map(|(at, _)| *at - killed);
                let closed = log.closes.iter().find(|(at, _)| *at > killed).copied();
                if let Some(back) = back {
                    break (back, closed);
                }
            }
            if Instant::now() > deadline {
                bail!("kill {kill}: not served again within {FAILOVER_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        caller.abort();
        let (closed_after, code) =
            closed.map_or((None, None), |(at, code)| (Some(at - killed), code));
        println!(
            "{}",
            json!({"part": "failover", "kill": kill, "served_again_ms": back.as_millis(),
                   "closed_ms": closed_after.map(|d| d.as_millis()), "close_code": code})
        );
        served.push(back.as_secs_f64());
        if let Some(d) = closed_after {
            noticed.push(d.as_secs_f64());
        }
        let _ = nodes[owner].child.wait().await;
        nodes[owner] = Node::start_with_ttl(&nats.url(), args.ttl).await;
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(vec![
        (
            format!(
                "failover: kill → served again, median / max ({} kills)",
                served.len()
            ),
            format!("{:.2} / {:.2} s", median(served.clone()), max(&served)),
        ),
        (
            format!(
                "failover: kill → forwarded socket closed, median / max ({})",
                noticed.len()
            ),
            format!("{:.2} / {:.2} s", median(noticed.clone()), max(&noticed)),
        ),
        (
            "failover: target (TTL + 1 s)".into(),
            format!("{:.2} s", args.ttl as f64 + 1.0),
        ),
    ])
}

/// What the failover caller saw, with the socket generation of each event.
#[derive(Debug, Default)]
struct CallerLog {
    /// Sockets opened so far.
    generation: u64,
    acks: Vec<(Instant, u64)>,
    /// When a socket was closed, and its close code.
    closes: Vec<(Instant, Option<u16>)>,
}

/// Calls `increment(1)` one after the other, reconnecting at once to the
/// next node in `urls` whenever the socket ends.
async fn keep_calling(urls: Vec<String>, log: Arc<Mutex<CallerLog>>) {
    let mut next = 0;
    loop {
        let url = &urls[next % urls.len()];
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url),
        )
        .await
        else {
            next += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let generation = {
            let mut log = log.lock().unwrap();
            log.generation += 1;
            log.generation
        };
        let mut id = 0u64;
        let code = loop {
            id += 1;
            let id = id.to_string();
            if ws
                .send(Ws::text(rpc(&id, "increment", json!([1]))))
                .await
                .is_err()
            {
                break None;
            }
            let acked = loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Ws::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                        if v["type"] == "rpc" && v["id"] == id.as_str() {
                            break Ok(v["result"].is_u64());
                        }
                    }
                    Ok(Some(Ok(Ws::Close(f)))) => break Err(f.map(|f| u16::from(f.code))),
                    Ok(Some(Ok(_))) => {}
                    _ => break Err(None),
                }
            };
            match acked {
                Ok(true) => log.lock().unwrap().acks.push((Instant::now(), generation)),
                Ok(false) => {}
                Err(code) => break code,
            }
        };
        log.lock().unwrap().closes.push((Instant::now(), code));
    }
}

/// The pids whose CPU time counts as the cluster's: every node and NATS.
fn pids(nats: &Nats, nodes: &[Node]) -> Vec<u32> {
    nodes
        .iter()
        .map(|n| &n.child)
        .chain([&nats.child])
        .filter_map(tokio::process::Child::id)
        .collect()
}

/// User + system CPU time of `pids`, from `/proc/<pid>/stat`.
fn cpu(pids: &[u32]) -> Result<Duration> {
    let ticks = 100.0; // USER_HZ, 100 on Linux.
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after_name = &stat[stat.rfind(')').context("bad stat")? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `after_name` starts at field 3.
        let utime: f64 = fields[11].parse()?;
        let stime: f64 = fields[12].parse()?;
        total += (utime + stime) / ticks;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Scheduler counts summed over every thread of some processes.
#[derive(Debug, Default)]
struct Sched {
    switches: u64,
    waited_ns: u64,
}

/// From `/proc/<pid>/task/*/`: `status` (voluntary and involuntary
/// context switches) and `schedstat` (time waiting on a run queue).
/// Threads that ended between two readings are missed: the counts are
/// for comparing sides, not exact.
fn sched(pids: &[u32]) -> Sched {
    let mut total = Sched::default();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
                for line in status.lines() {
                    if line.starts_with("voluntary_ctxt_switches")
                        || line.starts_with("nonvoluntary_ctxt_switches")
                    {
                        let n = line.rsplit(char::is_whitespace).next().unwrap_or("0");
                        total.switches += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            if let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) {
                let waited = stat.split_whitespace().nth(1).unwrap_or("0");
                total.waited_ns += waited.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn report(part: &str, label: &str, round: usize, r: &Run) {
    println!(
        "{}",
        json!({"part": part, "label": label, "round": round, "per_sec": r.per_sec.round(),
               "p50_us": r.p50_us.round(), "p99_us": r.p99_us.round(),
               "cpu_us_per_op": (r.cpu_us * 10.0).round() / 10.0,
               "switches_per_op": (r.switches * 100.0).round() / 100.0,
               "waited_us_per_op": (r.waited_us * 10.0).round() / 10.0})
    );
}

/// Medians of both sides and the median of their per-round ratios.
fn compare(part: &str, a: &str, ra: &[Run], b: &str, rb: &[Run]) -> Vec<(String, String)> {
    let side = |label: &str, runs: &[Run]| {
        (
            format!("{part}: {label} ops/s, p50 / p99, CPU, switches, run-queue wait per op"),
            format!(
                "{:.0}, {:.0} / {:.0} µs, {:.1} µs, {:.2}, {:.1} µs",
                median(runs.iter().map(|r| r.per_sec).collect()),
                median(runs.iter().map(|r| r.p50_us).collect()),
                median(runs.iter().map(|r| r.p99_us).collect()),
                median(runs.iter().map(|r| r.cpu_us).collect()),
                median(runs.iter().map(|r| r.switches).collect()),
                median(runs.iter().map(|r| r.waited_us).collect()),
            ),
        )
    };
    vec![
        side(a, ra),
        side(b, rb),
        (
            format!("{part}: {b} / {a} throughput (median of rounds)"),
            format!("{:.2}×", median(pair(rb, ra, |x, y| x.per_sec / y.per_sec))),
        ),
    ]
}

fn pair(a: &[Run], b: &[Run], f: impl Fn(&Run, &Run) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(x, y)).collect()
}

/// The `q` quantile of sorted latencies, in µs.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * q) as usize].as_secs_f64() * 1e6,
    }
}

/// The `q` quantile of every run's latencies together.
fn pooled(runs: &[Run], q: f64) -> f64 {
    let mut all: Vec<Duration> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    percentile(&all, q)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
