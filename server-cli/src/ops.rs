//! What operators get from the binary: the admin listener (`/healthz`,
//! `/readyz`, `/metrics` in Prometheus text), the process metrics it adds
//! (memory, CPU, file descriptors, read from `/proc` at each scrape), and
//! `--probe`, a health check for containers without `curl`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Installs the Prometheus recorder and serves the admin endpoints on
/// `addr` until `stop` completes; returns the task and the bound address.
pub(crate) async fn serve_admin(
    agents: &agents_server::Agents,
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            agents_server::metrics::LATENCY_BUCKETS,
        )
        .context("bad histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let app = agents.admin_router(move || {
        process_metrics();
        handle.render()
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --admin-addr {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%err, "admin listener failed");
        }
    });
    Ok((task, local))
}

/// Clock ticks per second of `/proc/<pid>/stat` (Linux's `USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process's memory, CPU time and file descriptors, as gauges.
fn process_metrics() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            metrics::gauge!("process_resident_memory_bytes").set(kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime and stime are the 14th and 15th fields: 11 and 12 after ')'.
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            metrics::gauge!("process_cpu_seconds_total").set((user + system) / TICKS_PER_SECOND);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// `--probe URL`: exits 0 when a GET of `URL` (plain `http://host:port/path`)
/// answers 200 within 5 s, else 1.
pub(crate) async fn probe(url: &str) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("--probe takes an http:// URL")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .is_ok_and(|r| r.unwrap_or(false)))
}
