//! `agents-server`: serves the example agents (`echo-agent`, `counter-agent`,
//! `chat-agent`) and optionally a built web app.
//!
//! ```text
//! cargo run -p agents-server -- --port 8787 --static-dir examples/react-app/dist
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agents_server::{AgentServer, Cors};
mod ops;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Agents over WebSockets, wire-compatible with Cloudflare's `agents` SDK.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AGENTS_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "AGENTS_PORT", default_value_t = 8787)]
    port: u16,
    /// Serve the files of this directory (a built web app) at `/`.
    #[arg(long, env = "AGENTS_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `agents_server=debug`.
    #[arg(long, env = "AGENTS_LOG", default_value = "info")]
    log: String,
    /// Log lines as `text` or `json` (one object per line, for collectors).
    #[arg(long, env = "AGENTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve `/healthz`, `/readyz` and `/metrics` (Prometheus) on this
    /// address, e.g. 127.0.0.1:9787. Off unless given.
    #[arg(long, env = "AGENTS_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Seconds to keep accepting after SIGTERM while `/readyz` says 503.
    #[arg(long, env = "AGENTS_DRAIN_DELAY", default_value_t = secs(agents_server::DEFAULT_DRAIN_DELAY))]
    drain_delay: f64,
    /// Cluster mode: the NATS server(s) (JetStream) this node joins,
    /// comma-separated, e.g. nats://10.0.0.5:4222. State then lives in
    /// JetStream (--data-dir is not used). Off unless given.
    #[arg(long, env = "AGENTS_NATS", value_name = "URL")]
    nats: Option<String>,
    /// Cluster mode: seconds a node's lease lives without renewal (how long
    /// a dead node's instances stay unavailable).
    #[arg(long, env = "AGENTS_LEASE_TTL", default_value_t = secs(agents_server::DEFAULT_LEASE_TTL))]
    lease_ttl: f64,
    /// Cluster mode: copies JetStream keeps of the cluster's buckets when it
    /// creates them (3 on a 3-server NATS cluster).
    #[arg(long, env = "AGENTS_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
    /// Cluster mode: seconds an HTTP request or a socket's opening that
    /// landed on another node waits for the owner's on_request or
    /// on_connect (then HTTP 504, or close 1013).
    #[arg(long, env = "AGENTS_FORWARD_TIMEOUT", default_value_t = secs(agents_server::FORWARDED_REQUEST_TIMEOUT))]
    forward_timeout: f64,
    /// Cluster mode: listen here (e.g. 0.0.0.0:7787) for direct
    /// connections from other nodes, which then send the frames of sockets
    /// forwarded to this node over them instead of through NATS (more than
    /// twice the forwarded throughput on a small machine). Off unless given.
    #[arg(long, env = "AGENTS_DIRECT_ADDR", value_name = "ADDR")]
    direct_addr: Option<SocketAddr>,
    /// Cluster mode: the host:port other nodes reach --direct-addr at
    /// (needed when it listens on every interface).
    #[arg(long, env = "AGENTS_DIRECT_ADVERTISE", value_name = "HOST:PORT")]
    direct_advertise: Option<String>,
    /// Check health and exit: GET this URL (e.g.
    /// http://127.0.0.1:9787/healthz); exit 0 on 200, 1 otherwise.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
    /// Directory of the SQLite database that keeps agent state across restarts.
    #[arg(long, env = "AGENTS_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Keep state in memory only (lost when the server stops).
    #[arg(long, env = "AGENTS_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,
    /// Seconds an instance without connections stays in memory.
    #[arg(long, env = "AGENTS_IDLE_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_IDLE_TIMEOUT))]
    idle_timeout: f64,
    #[command(flatten)]
    limits: Limits,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Budgets and deadlines (see the README's limits table).
#[derive(Debug, clap::Args)]
struct Limits {
    /// Largest incoming message in bytes (larger: close 1009).
    #[arg(long, env = "AGENTS_MAX_MESSAGE_SIZE", default_value_t = agents_server::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Open WebSockets on the server (more: HTTP 503).
    #[arg(long, env = "AGENTS_MAX_CONNECTIONS", default_value_t = agents_server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections one instance holds (more: close 1013).
    #[arg(long, env = "AGENTS_MAX_CONNECTIONS_PER_INSTANCE", default_value_t = agents_server::DEFAULT_MAX_CONNECTIONS_PER_INSTANCE)]
    max_connections_per_instance: usize,
    /// Instances in memory (more: idle ones evicted, else HTTP 503 / close 1013).
    #[arg(long, env = "AGENTS_MAX_INSTANCES", default_value_t = agents_server::DEFAULT_MAX_INSTANCES)]
    max_instances: usize,
    /// Bytes queued for one client before its instance waits for it.
    #[arg(long, env = "AGENTS_OUTBOUND_QUEUE_BYTES", default_value_t = agents_server::DEFAULT_OUTBOUND_QUEUE_BYTES)]
    outbound_queue_bytes: usize,
    /// Seconds a socket may accept no bytes while frames wait (then closed).
    #[arg(long, env = "AGENTS_SLOW_CONSUMER_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_SLOW_CONSUMER_TIMEOUT))]
    slow_consumer_timeout: f64,
    /// Bytes of messages queued for one instance before sockets stop reading.
    #[arg(long, env = "AGENTS_INBOX_BYTES", default_value_t = agents_server::DEFAULT_INBOX_BYTES)]
    inbox_bytes: usize,
    /// Bytes read off all sockets not yet taken by an instance (more: close 1013).
    #[arg(long, env = "AGENTS_MAX_UNFINISHED_BYTES", default_value_t = agents_server::DEFAULT_MAX_UNFINISHED_BYTES)]
    max_unfinished_bytes: usize,
    /// Seconds one message may take to arrive (then close 1013).
    #[arg(long, env = "AGENTS_MESSAGE_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_MESSAGE_TIMEOUT))]
    message_timeout: f64,
    /// Seconds a message being received may make no progress (then close 1013).
    #[arg(long, env = "AGENTS_MESSAGE_IDLE_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_MESSAGE_IDLE_TIMEOUT))]
    message_idle_timeout: f64,
    /// Seconds of silence before a ping; two of them close the socket.
    #[arg(long, env = "AGENTS_PING_INTERVAL", default_value_t = secs(agents_server::DEFAULT_PING_INTERVAL))]
    ping_interval: f64,
    /// Largest state as JSON, from clients and agents alike.
    #[arg(long, env = "AGENTS_MAX_STATE_BYTES", default_value_t = agents_server::DEFAULT_MAX_STATE_BYTES)]
    max_state_bytes: usize,
    /// Seconds a graceful shutdown may take before sockets are dropped.
    #[arg(long, env = "AGENTS_SHUTDOWN_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_SHUTDOWN_TIMEOUT))]
    shutdown_timeout: f64,
    /// Seconds a client may take to send a request head.
    #[arg(long, env = "AGENTS_HEADER_READ_TIMEOUT", default_value_t = secs(agents_server::DEFAULT_HEADER_READ_TIMEOUT))]
    header_read_timeout: f64,
    /// Largest request head in bytes (larger: HTTP 431).
    #[arg(long, env = "AGENTS_MAX_REQUEST_HEAD", default_value_t = agents_server::DEFAULT_MAX_REQUEST_HEAD)]
    max_request_head: usize,
    /// Origins allowed to open sockets, comma-separated (others: HTTP 403).
    /// Default: every origin.
    #[arg(long, env = "AGENTS_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// CORS for plain HTTP to agents: `*` for any origin, or origins
    /// comma-separated. Default: off.
    #[arg(long, env = "AGENTS_CORS", value_delimiter = ',')]
    cors: Vec<String>,
    /// With --cors: let browsers send credentials (cookies, HTTP auth).
    #[arg(long, env = "AGENTS_CORS_CREDENTIALS", requires = "cors")]
    cors_credentials: bool,
}

/// A duration as the seconds the flags take.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Seconds from a flag, refusing what no duration can be.
fn duration(flag: &str, seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds).with_context(|| format!("bad --{flag} {seconds}"))
}

impl Limits {
    fn apply(&self, server: AgentServer) -> anyhow::Result<AgentServer> {
        let mut server = server
            .max_message_size(self.max_message_size)
            .max_connections(self.max_connections)
            .max_connections_per_instance(self.max_connections_per_instance)
            .max_instances(self.max_instances)
            .outbound_queue_bytes(self.outbound_queue_bytes)
            .slow_consumer_timeout(duration(
                "slow-consumer-timeout",
                self.slow_consumer_timeout,
            )?)
            .inbox_bytes(self.inbox_bytes)
            .max_unfinished_bytes(self.max_unfinished_bytes)
            .message_timeout(duration("message-timeout", self.message_timeout)?)
            .message_idle_timeout(duration("message-idle-timeout", self.message_idle_timeout)?)
            .ping_interval(duration("ping-interval", self.ping_interval)?)
            .max_state_bytes(self.max_state_bytes)
            .shutdown_timeout(duration("shutdown-timeout", self.shutdown_timeout)?)
            .header_read_timeout(duration("header-read-timeout", self.header_read_timeout)?)
            .max_request_head(self.max_request_head);
        let origins: Vec<&String> = self
            .allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .collect();
        if !origins.is_empty() {
            server = server.allowed_origins(origins.into_iter().cloned());
        }
        let cors: Vec<&String> = self.cors.iter().filter(|o| !o.is_empty()).collect();
        if !cors.is_empty() {
            let cors = if cors.iter().any(|o| o.as_str() == "*") {
                Cors::permissive()
            } else {
                Cors::origins(cors.into_iter().cloned())
            };
            server = server.cors(cors.allow_credentials(self.cors_credentials));
        }
        Ok(server)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        std::process::exit(if ops::probe(url).await? { 0 } else { 1 });
    }
    let filter = EnvFilter::try_new(&args.log).context("bad --log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let storage = if args.in_memory || args.nats.is_some() {
        agents_server::Storage::in_memory()
    } else {
        agents_server::Storage::open_dir(&args.data_dir)
            .with_context(|| format!("cannot open --data-dir {}", args.data_dir.display()))?
    };
    let mut server = agents_server_cli::demo::server().storage(storage);
    if let Some(urls) = &args.nats {
        let options = agents_server::ClusterOptions::new([urls])
            .lease_ttl(duration("lease-ttl", args.lease_ttl)?)
            .replicas(args.nats_replicas)
            .forward_timeout(duration("forward-timeout", args.forward_timeout)?);
        let options = match args.direct_addr {
            Some(addr) => options.direct(addr, args.direct_advertise.clone()),
            None if args.direct_advertise.is_some() => {
                anyhow::bail!("--direct-advertise needs --direct-addr")
            }
            None => options,
        };
        let cluster = agents_server::Cluster::connect(options)
            .await
            .with_context(|| format!("cannot join the cluster at --nats {urls}"))?;
        tracing::info!(node = %cluster.node_id(), direct = ?cluster.direct_addr(), "joined the cluster");
        server = server.cluster(cluster);
    }
    let server = server
        .idle_timeout(duration("idle-timeout", args.idle_timeout)?)
        .drain_delay(duration("drain-delay", args.drain_delay)?);
    let agents = args.limits.apply(server)?.build();
    let mut app = agents.router();
    app = match &args.static_dir {
        Some(dir) => app.fallback_service(
            agents_server::static_files(dir)
                .with_context(|| format!("--static-dir {} is not a directory", dir.display()))?,
        ),
        None => app.fallback(|| async { (http_not_found(), "Not found") }),
    };

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("bad address {}:{}", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // The admin listener lives until the process ends (it reports the
    // drain), so it is stopped after `serve` returns.
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match args.admin_addr {
        Some(admin_addr) => Some(
            ops::serve_admin(&agents, admin_addr, async {
                let _ = admin_stopped.await;
            })
            .await?,
        ),
        None => None,
    };
    // Scripts wait for this line and read the port from it.
    println!("agents-server listening on http://{local}");
    tracing::info!(%local, "listening");
    if let Some((_, admin_local)) = &admin {
        println!("agents-server admin on http://{admin_local}");
        tracing::info!(%admin_local, "admin listener");
    }
    agents.serve(listener, app, shutdown_signal()).await?;
    let _ = admin_stop.send(());
    if let Some((admin, _)) = admin {
        let _ = admin.await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn http_not_found() -> axum::http::StatusCode {
    axum::http::StatusCode::NOT_FOUND
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
