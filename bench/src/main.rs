//! `agents-bench`: drives a server that speaks the agents WebSocket protocol
//! (ours, or the Node `ws` baseline in `tests/bench/`) and prints a table
//! plus one JSON line per figure. Loopback only; every scenario is bounded
//! in count and time.
//!
//! ```text
//! agents-bench --url ws://127.0.0.1:8787 --label ours [--scenario echo,broadcast,connect,idle,rpc]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Barrier};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest any single scenario may run.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(about = "Load tool for agents servers (127.0.0.1 only)")]
struct Args {
    /// Server base URL (must be on 127.0.0.1).
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    url: String,
    /// A name for the server in the output (e.g. `ours`, `baseline`).
    #[arg(long, default_value = "ours")]
    label: String,
    /// Comma-separated scenarios: echo, broadcast, connect, idle, rpc.
    #[arg(long, default_value = "echo,broadcast,connect,idle,rpc")]
    scenario: String,
    /// Echo: connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Echo: round trips per connection.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Echo: message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Broadcast: receiving connections on one instance.
    #[arg(long, default_value_t = 1000)]
    broadcast_connections: usize,
    /// Broadcast: messages broadcast (one after the other).
    #[arg(long, default_value_t = 200)]
    broadcasts: usize,
    /// Connect: connections opened (handshake + identity frame), 8 at a time.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Idle: connections held open.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Idle: the server's pid, to read its RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// RPC: calls per connection (`increment`, over `--connections`).
    #[arg(long, default_value_t = 500)]
    rpc_calls: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.url.starts_with("ws://127.0.0.1:") || args.url.starts_with("ws://localhost:"),
        "agents-bench only targets 127.0.0.1"
    );
    let args = Arc::new(args);
    for scenario in args.scenario.split(',').map(str::trim) {
        let run = async {
            match scenario {
                "echo" => {
                    echo(&args, true).await?;
                    echo(&args, false).await
                }
                "broadcast" => broadcast(&args).await,
                "connect" => connect(&args).await,
                "idle" => idle(&args).await,
                "rpc" => rpc(&args).await,
                other => bail!("unknown scenario {other}"),
            }
        };
        match tokio::time::timeout(SCENARIO_LIMIT, run).await {
            Ok(result) => result.with_context(|| format!("scenario {scenario}"))?,
            Err(_) => bail!("scenario {scenario} exceeded {SCENARIO_LIMIT:?}"),
        }
    }
    Ok(())
}

async fn open(args: &Args, path: &str) -> Result<Ws> {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

/// Reads until a text frame for which `want` is true (skipping protocol frames).
async fn until_text(ws: &mut Ws, mut want: impl FnMut(&str) -> bool) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if want(t.as_str()) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Waits for the connect frames (the MCP frame is the last one).
async fn handshake(ws: &mut Ws) -> Result<()> {
    until_text(ws, |t| t.contains("cf_agent_mcp_servers"))
        .await
        .map(drop)
}

/// A bare WebSocket client for the hot loops: frames are written with a zero
/// mask and parsed by hand, so the load generator spends its core on the
/// server's replies rather than on its own framing (the machine has two
/// cores: one for the server, one for this tool).
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Raw {
    /// Takes over a socket whose handshake frames have all been read.
    fn from(ws: Ws) -> Result<Raw> {
        match ws.into_inner() {
            MaybeTlsStream::Plain(stream) => {
                stream.set_nodelay(true)?;
                Ok(Raw {
                    stream,
                    buf: Vec::with_capacity(4096),
                    start: 0,
                })
            }
            _ => bail!("only plain ws:// is supported"),
        }
    }

    async fn send_text(&mut self, text: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut frame = Vec::with_capacity(text.len() + 14);
        frame.push(0x81);
        match text.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload as is
        frame.extend_from_slice(text);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next text frame's payload (other frames are skipped).
    async fn next_text(&mut self) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() >= 2 {
                let (opcode, len7) = (avail[0] & 0x0f, (avail[1] & 0x7f) as usize);
                let (len, head) = match len7 {
                    126 if avail.len() >= 4 => {
                        (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
                    }
                    127 if avail.len() >= 10 => {
                        (u64::from_be_bytes(avail[2..10].try_into()?) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && avail.len() >= head + len {
                    let payload = avail[head..head + len].to_vec();
                    self.start += head + len;
                    ensure!(opcode != 8, "closed by server");
                    if opcode == 1 {
                        return Ok(payload);
                    }
                    continue;
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            ensure!(n > 0, "connection ended");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// CPU time (user + system) of process `pid` (`self` for this one).
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Measures CPU of this tool and of the server over a run.
struct Cpu {
    server: Option<String>,
    at: (Duration, Duration),
}

impl Cpu {
    fn start(args: &Args) -> Cpu {
        let server = args.server_pid.map(|p| p.to_string());
        let at = (
            cpu_of("self"),
            server.as_deref().map_or(Duration::ZERO, cpu_of),
        );
        Cpu { server, at }
    }

    /// `(client %, server %, server µs per op)` over `secs` and `ops`.
    fn figures(&self, secs: f64, ops: f64) -> Vec<(&'static str, f64)> {
        let client = (cpu_of("self") - self.at.0).as_secs_f64();
        let mut out = vec![("client_cpu_pct", client / secs * 100.0)];
        if let Some(pid) = &self.server {
            let server = (cpu_of(pid) - self.at.1).as_secs_f64();
            out.push(("server_cpu_pct", server / secs * 100.0));
            out.push(("server_us_per_op", server * 1e6 / ops));
        }
        out
    }
}

/// Latency summary in microseconds.
struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Summary {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn report(args: &Args, bench: &str, figures: &[(&str, f64)], note: &str) {
    let cells: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
    println!(
        "{:<10} {:<22} {} {note}",
        args.label,
        bench,
        cells.join("  ")
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), bench.into());
    json.insert("label".into(), args.label.clone().into());
    for (k, v) in figures {
        json.insert((*k).into(), serde_json::json!((v * 10.0).round() / 10.0));
    }
    println!("JSON {}", serde_json::Value::Object(json));
}

async fn echo(args: &Arc<Args>, shared: bool) -> Result<()> {
    let n = args.connections;
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let path = if shared {
            "/agents/echo-agent/bench-echo-shared".to_owned()
        } else {
            format!("/agents/echo-agent/bench-echo-{i}")
        };
        let mut ws = open(args, &path).await?;
        handshake(&mut ws).await?;
        let mut raw = Raw::from(ws)?;
        let (barrier, m, size) = (barrier.clone(), args.messages, args.size);
        tasks.push(tokio::spawn(async move {
            let payload = format!("{i:0>width$}", width = size.max(8)).into_bytes();
            barrier.wait().await;
            let mut lat = Vec::with_capacity(m);
            for _ in 0..m {
                let t0 = Instant::now();
                raw.send_text(&payload).await?;
                while raw.next_text().await? != payload {}
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(n * args.messages);
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let ops = (n * args.messages) as f64;
    let s = summarize(all);
    let name = if shared {
        "echo-shared"
    } else {
        "echo-per-conn"
    };
    let mut figures = vec![
        ("rt_per_s", ops / secs),
        ("p50_us", s.p50),
        ("p99_us", s.p99),
        ("max_us", s.max),
    ];
    figures.extend(cpu.figures(secs, ops));
    report(args, name, &figures, "");
    Ok(())
}

async fn broadcast(args: &Arc<Args>) -> Result<()> {
    let c = args.broadcast_connections;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut receivers = Vec::new();
    for i in 0..c {
        let mut ws = open(args, &format!("/agents/counter-agent/bench-bcast?_pk=r{i}")).await?;
        handshake(&mut ws).await?;
        let mut raw = Raw::from(ws)?;
        let tx = tx.clone();
        let k = args.broadcasts;
        receivers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < k {
                let t = raw.next_text().await?;
                if t.first() != Some(&b'b') {
                    continue;
                }
                let idx: usize = std::str::from_utf8(&t[1..])?.parse()?;
                let _ = tx.send((idx, Instant::now()));
                seen += 1;
            }
            anyhow::Ok(raw)
        }));
    }
    let mut sender = open(args, "/agents/counter-agent/bench-bcast?_pk=sender").await?;
    handshake(&mut sender).await?;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(args.broadcasts);
    for k in 0..args.broadcasts {
        let sent = Instant::now();
        sender
            .send(Message::text(format!("broadcast:b{k}")))
            .await?;
        let mut got = 0;
        let mut last = sent;
        while got < c {
            let (idx, at) = rx.recv().await.context("receivers ended")?;
            ensure!(idx == k, "broadcast {idx} arrived while waiting for {k}");
            got += 1;
            last = last.max(at);
        }
        lat.push(last - sent);
    }
    let secs = t0.elapsed().as_secs_f64();
    let ops = (c * args.broadcasts) as f64;
    let mut figures = vec![("deliveries_per_s", ops / secs)];
    figures.extend(cpu.figures(secs, ops));
    for r in receivers {
        let _ = r.await?;
    }
    let s = summarize(lat);
    figures.extend([("p50_us", s.p50), ("p99_us", s.p99)]);
    report(args, "broadcast", &figures, &format!("({c} receivers)"));
    Ok(())
}

async fn connect(args: &Arc<Args>) -> Result<()> {
    let total = args.connects;
    let workers = 8;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..total).step_by(workers) {
                let t = Instant::now();
                let mut ws = open(
                    &args,
                    &format!("/agents/echo-agent/bench-connect-{}", i % 16),
                )
                .await?;
                until_text(&mut ws, |t| t.contains("cf_agent_identity")).await?;
                lat.push(t.elapsed());
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = summarize(all);
    let mut figures = vec![
        ("connects_per_s", total as f64 / secs),
        ("p50_us", s.p50),
        ("p99_us", s.p99),
    ];
    figures.extend(cpu.figures(secs, total as f64));
    report(args, "connect", &figures, "");
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

async fn idle(args: &Arc<Args>) -> Result<()> {
    let Some(pid) = args.server_pid else {
        println!(
            "{:<10} {:<22} skipped (no --server-pid)",
            args.label, "idle-memory"
        );
        return Ok(());
    };
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(args.idle);
    let mut errors = 0usize;
    let batch = 64;
    let mut i = 0;
    while i < args.idle {
        let mut pending = Vec::new();
        for j in i..(i + batch).min(args.idle) {
            let args = args.clone();
            pending.push(tokio::spawn(async move {
                let mut ws =
                    open(&args, &format!("/agents/echo-agent/bench-idle-{}", j % 100)).await?;
                handshake(&mut ws).await?;
                anyhow::Ok(ws)
            }));
        }
        for p in pending {
            match p.await? {
                Ok(ws) => held.push(ws),
                Err(_) => errors += 1,
            }
        }
        i += batch;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    // Every held connection still answers.
    let mut alive = 0usize;
    for ws in held.iter_mut().step_by(97) {
        ws.send(Message::text("ping?")).await?;
        until_text(ws, |t| t == "ping?").await?;
        alive += 1;
    }
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / held.len().max(1) as f64;
    report(
        args,
        "idle-memory",
        &[
            ("connections", held.len() as f64),
            ("errors", errors as f64),
            ("rss_growth_kib", (after - before.min(after)) as f64),
            ("bytes_per_conn", per_conn),
        ],
        &format!("({alive} sampled connections answered)"),
    );
    for mut ws in held {
        let _ = ws.close(None).await;
    }
    Ok(())
}

async fn rpc(args: &Arc<Args>) -> Result<()> {
    let n = args.connections;
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut ws = open(args, &format!("/agents/counter-agent/bench-rpc-{i}")).await?;
        handshake(&mut ws).await?;
        let (barrier, m) = (barrier.clone(), args.rpc_calls);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(m);
            for k in 0..m {
                let id = format!("c{i}-{k}");
                let frame =
                    format!(r#"{{"type":"rpc","id":"{id}","method":"increment","args":[1]}}"#);
                let t0 = Instant::now();
                ws.send(Message::text(frame)).await?;
                let needle = format!(r#""id":"{id}""#);
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    until_text(&mut ws, |t| t.contains(&needle)),
                )
                .await
                .context("no rpc reply within 5 s")??;
                ensure!(reply.contains(r#""success":true"#), "rpc failed: {reply}");
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(lat) => all.extend(lat),
            Err(e) => {
                println!("{:<10} {:<22} unsupported ({e})", args.label, "rpc");
                return Ok(());
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = summarize(all);
    let ops = (n * args.rpc_calls) as f64;
    let mut figures = vec![
        ("calls_per_s", ops / secs),
        ("p50_us", s.p50),
        ("p99_us", s.p99),
    ];
    figures.extend(cpu.figures(secs, ops));
    report(args, "rpc", &figures, "");
    Ok(())
}
