//! `--scrape URL`: what a Prometheus server does to a server's admin
//! listener, done while the load runs — a `GET` of `/metrics` at a fixed
//! interval (a new connection each time) — so that a run "with metrics"
//! pays for rendering them too. Reports how many scrapes were made, how long
//! they took, and the server's own message counters from the last one (which
//! shows that the metrics were really being recorded).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::{report, Args};

/// Longest one scrape may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: u64,
    last_error: Option<String>,
    bytes: u64,
    took: Duration,
    /// Sums over all label sets of these counters, from the last scrape.
    received: f64,
    sent: f64,
}

/// A scraping task started by [`Scraper::start`].
pub(crate) struct Scraper {
    task: JoinHandle<()>,
    stats: Arc<Mutex<Stats>>,
}

impl Scraper {
    /// Scrapes `url` (`http://127.0.0.1:PORT/path`) now and then every
    /// `every` until [`Scraper::finish`].
    pub(crate) fn start(url: &str, every: Duration) -> Result<Scraper> {
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .context("--scrape takes an http://127.0.0.1:PORT/path URL")?;
        let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
        let port: u16 = port.parse().context("bad port in --scrape")?;
        let request =
            format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        let stats = Arc::new(Mutex::new(Stats::default()));
        let shared = stats.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t0 = Instant::now();
                let got = tokio::time::timeout(SCRAPE_TIMEOUT, get(port, &request)).await;
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                match got {
                    Ok(Ok(body)) => {
                        s.ok += 1;
                        s.took += t0.elapsed();
                        s.bytes += body.len() as u64;
                        s.received = counter_sum(&body, "agents_messages_received_total");
                        s.sent = counter_sum(&body, "agents_messages_sent_total");
                    }
                    Ok(Err(err)) => {
                        s.failed += 1;
                        s.last_error = Some(format!("{err:#}"));
                    }
                    Err(_) => {
                        s.failed += 1;
                        s.last_error = Some(format!("no answer within {SCRAPE_TIMEOUT:?}"));
                    }
                }
            }
        });
        Ok(Scraper { task, stats })
    }

    /// Stops scraping and reports the figures as bench `scrape-<scenario>`;
    /// fails if any scrape failed (the run would not be "with metrics").
    pub(crate) fn finish(self, args: &Args) -> Result<()> {
        self.task.abort();
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let ok = s.ok.max(1) as f64;
        report(
            args,
            &format!("scrape-{}", args.scenario.replace(',', "+")),
            &[
                ("scrapes", s.ok as f64),
                ("failed", s.failed as f64),
                ("kib_per_scrape", s.bytes as f64 / 1024.0 / ok),
                ("ms_per_scrape", s.took.as_secs_f64() * 1e3 / ok),
                ("messages_received_counted", s.received),
                ("messages_sent_counted", s.sent),
            ],
            "(GET /metrics while the load ran; counters summed from the last scrape)",
        );
        ensure!(
            s.failed == 0,
            "{} scrape(s) of /metrics failed, last: {}",
            s.failed,
            s.last_error.as_deref().unwrap_or("?")
        );
        ensure!(s.ok > 0, "no scrape of /metrics completed");
        Ok(())
    }
}

/// One `GET`: the body of a 200 answer.
async fn get(port: u16, request: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(64 * 1024);
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8(answer).context("answer is not UTF-8")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("answer without a header end")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "answer {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// The sum of every sample of counter `name` in a Prometheus text body.
fn counter_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
