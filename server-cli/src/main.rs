//! `agents-server`: serves the example agents (`echo-agent`, `counter-agent`,
//! `chat-agent`) and optionally a built web app.
//!
//! ```text
//! cargo run -p agents-server -- --port 8787 --static-dir examples/react-app/dist
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Directory of the SQLite database that keeps agent state across restarts.
    #[arg(long, env = "AGENTS_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Keep state in memory only (lost when the server stops).
    #[arg(long, env = "AGENTS_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,
    /// Seconds an instance without connections stays in memory.
    #[arg(long, env = "AGENTS_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("bad --log filter")?)
        .with_writer(std::io::stderr)
        .init();

    let storage = if args.in_memory {
        agents_server::Storage::in_memory()
    } else {
        agents_server::Storage::open_dir(&args.data_dir)
            .with_context(|| format!("cannot open --data-dir {}", args.data_dir.display()))?
    };
    let agents = agents_server_cli::demo::server()
        .storage(storage)
        .idle_timeout(std::time::Duration::from_secs(args.idle_timeout))
        .build();
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
    // Scripts wait for this line and read the port from it.
    println!("agents-server listening on http://{local}");
    tracing::info!(%local, "listening");
    agents.serve(listener, app, shutdown_signal()).await?;
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
