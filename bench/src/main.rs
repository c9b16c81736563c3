//! `agents-bench`: drives a server that speaks the agents WebSocket protocol
//! (ours, the Node `ws` baseline in `tests/bench/`, or its own bare server,
//! the machine's limit) and prints a table plus one JSON line per figure.
//! Loopback only; every scenario is bounded in count and time.
//!
//! ```text
//! agents-bench --url ws://127.0.0.1:8787 --label ours --server-pid PID [--scenario echo,rpc,…]
//! agents-bench --serve-limit --port 0      # the bare server (see `limit`)
//! agents-bench … --scrape http://127.0.0.1:ADMIN/metrics   # as Prometheus would, meanwhile
//! ```

mod client;
mod limit;
mod relay;
mod scenarios;
mod scrape;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

/// Longest any single scenario may run.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

/// Every scenario, in the order they run by default. `idle` comes first so
/// that the server's memory growth is not hidden by memory freed earlier.
const ALL_SCENARIOS: &str = "idle,echo,pipelined,broadcast,burst,connect,rpc,neighbour";

#[derive(Debug, Parser)]
#[command(
    about = "Load tool for agents servers (127.0.0.1 only)",
    args_override_self = true
)]
pub(crate) struct Args {
    /// Run the bare WebSocket server (the machine's limit) instead of a load.
    #[arg(long)]
    serve_limit: bool,
    /// With --serve-limit: the port (0 picks one; the address is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// With --serve-limit: echo through NATS at this URL and a `--nats-echo`
    /// process (the limit of a cluster node forwarding to the owner).
    #[arg(long)]
    relay: Option<String>,
    /// Run the bare NATS echo (the owner side of `--relay`) on this NATS URL.
    #[arg(long)]
    nats_echo: Option<String>,
    /// Run the bare TCP echo (the owner side of `--relay tcp://…`) on this
    /// port (0 picks one; the address is printed).
    #[arg(long)]
    tcp_echo: Option<u16>,
    /// Server base URL (must be on 127.0.0.1).
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    url: String,
    /// A name for the server in the output (e.g. `ours`, `limit`, `baseline`).
    #[arg(long, default_value = "ours")]
    label: String,
    /// The round this run belongs to (for pairing runs in the summary).
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Comma-separated scenarios: idle, echo, pipelined, broadcast, burst,
    /// connect, rpc, neighbour.
    #[arg(long, default_value = ALL_SCENARIOS)]
    scenario: String,
    /// Echo: connections.
    #[arg(long, default_value_t = 50)]
    pub(crate) connections: usize,
    /// Echo: round trips per connection.
    #[arg(long, default_value_t = 3000)]
    pub(crate) messages: usize,
    /// Echo: message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Pipelined echo: frames in flight per connection (one instance each).
    #[arg(long, default_value_t = 16)]
    pub(crate) pipeline_depth: usize,
    /// Pipelined echo: round trips per connection.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) pipeline_messages: usize,
    /// Broadcast: receiving connections on one instance; one run per count.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    pub(crate) broadcast_connections: Vec<usize>,
    /// Broadcast: deliveries per run (messages broadcast, one after the
    /// other, = this / receivers).
    #[arg(long, default_value_t = 200_000)]
    pub(crate) broadcast_deliveries: usize,
    /// Burst: listening connections on one instance.
    #[arg(long, default_value_t = 200)]
    pub(crate) burst_listeners: usize,
    /// Burst: `broadcast:` frames sent in one write.
    #[arg(long, default_value_t = 100)]
    pub(crate) burst_size: usize,
    /// Burst: bursts, one after the other.
    #[arg(long, default_value_t = 200)]
    pub(crate) bursts: usize,
    /// Connect: connections opened (handshake + identity frame), 8 at a time.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connects: usize,
    /// Idle: connections held open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) idle: usize,
    /// The server's pid, for its CPU time and memory from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// RPC: connections on the one counter instance.
    #[arg(long, default_value_t = 50)]
    pub(crate) rpc_connections: usize,
    /// RPC: `increment` calls per connection, one after the other.
    #[arg(long, default_value_t = 1000)]
    pub(crate) rpc_calls: usize,
    /// Neighbour: echo connections on the measured instance.
    #[arg(long, default_value_t = 10)]
    pub(crate) neighbour_echo: usize,
    /// Neighbour: seconds of each phase (quiet, loaded, quiet).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) neighbour_secs: f64,
    /// Neighbour: size of each state the two neighbours write, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) neighbour_state_bytes: usize,
    /// Neighbour: states per second each neighbour sends (0: back to back,
    /// two in flight); to compare servers at the same load.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) neighbour_rate: f64,
    /// While the scenarios run, `GET` this URL (a server's Prometheus
    /// `/metrics`, on 127.0.0.1) every `--scrape-every` seconds.
    #[arg(long)]
    scrape: Option<String>,
    /// Seconds between two scrapes of `--scrape`.
    #[arg(long, default_value_t = 1.0)]
    scrape_every: f64,
}

impl Args {
    /// The server's port, from `--url`.
    pub(crate) fn port(&self) -> Result<u16> {
        let rest = self
            .url
            .rsplit(':')
            .next()
            .context("no port in --url")?
            .trim_end_matches('/');
        Ok(rest.parse()?)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.serve_limit {
        return limit::serve(args.port, args.relay.as_deref());
    }
    if let Some(url) = &args.nats_echo {
        return relay::echo(url);
    }
    if let Some(port) = args.tcp_echo {
        return relay::tcp_echo(port);
    }
    ensure!(
        args.url.starts_with("ws://127.0.0.1:") || args.url.starts_with("ws://localhost:"),
        "agents-bench only targets 127.0.0.1"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(std::sync::Arc::new(args)))
}

async fn run(args: std::sync::Arc<Args>) -> Result<()> {
    let scraper = match &args.scrape {
        Some(url) => {
            ensure!(args.scrape_every > 0.0, "--scrape-every must be positive");
            let every = Duration::from_secs_f64(args.scrape_every);
            Some(scrape::Scraper::start(url, every)?)
        }
        None => None,
    };
    for scenario in args.scenario.split(',').map(str::trim) {
        let go = async {
            match scenario {
                "echo" => {
                    scenarios::echo(&args, true).await?;
                    scenarios::echo(&args, false).await
                }
                "pipelined" => scenarios::pipelined(&args).await,
                "broadcast" => {
                    for &c in &args.broadcast_connections {
                        scenarios::broadcast(&args, c).await?;
                    }
                    Ok(())
                }
                "burst" => scenarios::burst(&args).await,
                "connect" => scenarios::connect(&args).await,
                "idle" => scenarios::idle(&args).await,
                "rpc" => scenarios::rpc(&args).await,
                "neighbour" => scenarios::neighbour(&args).await,
                other => bail!("unknown scenario {other}"),
            }
        };
        match tokio::time::timeout(SCENARIO_LIMIT, go).await {
            Ok(result) => result.with_context(|| format!("scenario {scenario}"))?,
            Err(_) => bail!("scenario {scenario} exceeded {SCENARIO_LIMIT:?}"),
        }
    }
    match scraper {
        Some(scraper) => scraper.finish(&args),
        None => Ok(()),
    }
}

/// CPU time (user + system, all threads, exited ones included) of process
/// `pid` (`self` for this one), from `/proc/<pid>/stat`: in 10 ms ticks.
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

/// CPU time of each live thread of process `pid`, to the nanosecond
/// (`se.sum_exec_runtime` of `/proc/<pid>/task/<tid>/sched`, in ms); `None`
/// when the kernel does not show it.
fn thread_cpu_of(pid: &str) -> Option<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let tid = task.ok()?.file_name().to_string_lossy().into_owned();
        let Ok(sched) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")) else {
            continue; // the thread just ended
        };
        let ms: f64 = sched
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))?
            .rsplit(':')
            .next()?
            .trim()
            .parse()
            .ok()?;
        out.insert(tid, ms);
    }
    Some(out)
}

/// CPU time of a process at one moment: ticks of the whole process, and
/// each live thread's to the nanosecond.
#[derive(Debug)]
struct CpuAt {
    ticks: Duration,
    threads: Option<HashMap<String, f64>>,
}

impl CpuAt {
    fn now(pid: &str) -> CpuAt {
        CpuAt {
            threads: thread_cpu_of(pid),
            ticks: cpu_of(pid),
        }
    }

    /// CPU seconds from `self` to `later`: the threads' nanoseconds, unless
    /// they disagree with the process's ticks by more than two ticks (a
    /// thread ended in between: its time is only in the ticks, which the
    /// kernel derives from the same nanoseconds, truncated).
    fn secs_to(&self, later: &CpuAt) -> f64 {
        let ticks = later.ticks.saturating_sub(self.ticks).as_secs_f64();
        if let (Some(then), Some(now)) = (&self.threads, &later.threads) {
            let ms: f64 = now
                .iter()
                .map(|(tid, ms)| ms - then.get(tid).copied().unwrap_or(0.0))
                .sum();
            let gone = then.keys().any(|tid| !now.contains_key(tid));
            if !gone && (ms / 1e3 - ticks).abs() <= 0.02 {
                return ms / 1e3;
            }
        }
        ticks
    }
}

/// Measures CPU of this tool and of the server over a run.
#[derive(Debug)]
pub(crate) struct Cpu {
    server: Option<String>,
    at: (CpuAt, Option<CpuAt>),
}

impl Cpu {
    pub(crate) fn start(args: &Args) -> Cpu {
        let server = args.server_pid.map(|p| p.to_string());
        let at = (CpuAt::now("self"), server.as_deref().map(CpuAt::now));
        Cpu { server, at }
    }

    /// Server CPU seconds since the start.
    pub(crate) fn server_secs(&self) -> f64 {
        match (&self.server, &self.at.1) {
            (Some(pid), Some(at)) => at.secs_to(&CpuAt::now(pid)),
            _ => 0.0,
        }
    }

    /// `(client %, server %, server µs per op)` over `secs` and `ops`.
    pub(crate) fn figures(&self, secs: f64, ops: f64) -> Vec<(&'static str, f64)> {
        let client = self.at.0.secs_to(&CpuAt::now("self"));
        let mut out = vec![("client_cpu_pct", client / secs * 100.0)];
        if self.server.is_some() {
            let server = self.server_secs();
            out.push(("server_cpu_pct", server / secs * 100.0));
            out.push(("server_us_per_op", server * 1e6 / ops));
        }
        out
    }
}

/// Latency summary in microseconds.
pub(crate) struct Summary {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

pub(crate) fn summarize(mut samples: Vec<Duration>) -> Summary {
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

/// `v` rounded to `digits` significant digits (ratios of small figures
/// such as 0.17 µs per delivery need more than two decimals).
fn significant(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(digits - 1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// Prints one figure line and its `JSON {...}` twin (read by
/// `tests/bench/report.mjs`).
pub(crate) fn report(args: &Args, bench: &str, figures: &[(&str, f64)], note: &str) {
    let cells: Vec<String> = figures
        .iter()
        .map(|(k, v)| match v.abs() {
            a if a >= 100.0 => format!("{k}={v:.0}"),
            a if a >= 10.0 => format!("{k}={v:.1}"),
            _ => format!("{k}={v:.3}"),
        })
        .collect();
    println!(
        "{:<10} {:<16} {} {note}",
        args.label,
        bench,
        cells.join("  ")
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), bench.into());
    json.insert("label".into(), args.label.clone().into());
    json.insert("round".into(), args.round.into());
    for (k, v) in figures {
        json.insert((*k).into(), serde_json::json!(significant(*v, 4)));
    }
    println!("JSON {}", serde_json::Value::Object(json));
}
