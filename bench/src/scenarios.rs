//! The benchmark scenarios. Each one sets up its sockets, measures a
//! bounded amount of work, and reports rate, latency, this tool's CPU and
//! the server's CPU per operation (see [`Cpu`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::SinkExt;
use tokio::sync::{mpsc, watch, Barrier};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, push_frame, Raw, STATE_PREFIX};
use crate::{report, summarize, Args, Cpu};

/// A name no earlier run on the same server used (instances keep state).
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Reports a measured run: `ops` operations in `secs` as `rate`, the
/// latency percentiles of `lat`, and CPU (per operation for the server).
#[allow(clippy::too_many_arguments)]
fn report_run(
    args: &Args,
    bench: &str,
    rate: &'static str,
    ops: f64,
    secs: f64,
    lat: Vec<Duration>,
    cpu: &Cpu,
    note: &str,
) {
    let s = summarize(lat);
    let mut figures = vec![
        (rate, ops / secs),
        ("p50_us", s.p50),
        ("p99_us", s.p99),
        ("max_us", s.max),
    ];
    figures.extend(cpu.figures(secs, ops));
    report(args, bench, &figures, note);
}

fn payload(i: usize, size: usize) -> Vec<u8> {
    format!("{i:0>width$}", width = size.max(8)).into_bytes()
}

/// Ping-pong: each connection sends a frame and waits for its echo.
pub(crate) async fn echo(args: &Arc<Args>, shared: bool) -> Result<()> {
    let n = args.connections;
    let run = unique();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let path = if shared {
            format!("/agents/echo-agent/bench-echo-shared-{run}")
        } else {
            format!("/agents/echo-agent/bench-echo-{run}-{i}")
        };
        let mut raw = client::open_raw(&args.url, &path).await?;
        let (barrier, m, payload) = (barrier.clone(), args.messages, payload(i, args.size));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(m);
            for _ in 0..m {
                let t0 = Instant::now();
                raw.send_text(&payload).await?;
                while raw.next_text().await? != payload.as_slice() {}
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
    let name = if shared {
        "echo-shared"
    } else {
        "echo-per-conn"
    };
    let (ops, secs) = ((n * args.messages) as f64, t0.elapsed().as_secs_f64());
    let note = format!("({n} connections)");
    report_run(args, name, "rt_per_s", ops, secs, all, &cpu, &note);
    Ok(())
}

/// Pipelined echo: `pipeline_depth` frames in flight per connection, one
/// instance per connection; replies that arrive together are answered with
/// new frames in one write.
pub(crate) async fn pipelined(args: &Arc<Args>) -> Result<()> {
    let (n, depth, m) = (
        args.connections,
        args.pipeline_depth.max(1),
        args.pipeline_messages,
    );
    let run = unique();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let path = format!("/agents/echo-agent/bench-pipe-{run}-{i}");
        let mut raw = client::open_raw(&args.url, &path).await?;
        let barrier = barrier.clone();
        let mut one = Vec::new();
        push_frame(&mut one, 0x1, &payload(i, args.size));
        let want = payload(i, args.size);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(m);
            let mut sent_at = VecDeque::with_capacity(depth);
            let (mut sent, mut batch) = (0, Vec::new());
            let mut refill = depth.min(m);
            loop {
                if refill > 0 {
                    batch.clear();
                    let now = Instant::now();
                    for _ in 0..refill {
                        batch.extend_from_slice(&one);
                        sent_at.push_back(now);
                    }
                    raw.send_raw(&batch).await?;
                    sent += refill;
                    refill = 0;
                }
                if lat.len() == m {
                    break;
                }
                ensure!(raw.next_text().await? == want.as_slice(), "unexpected echo");
                let at = sent_at.pop_front().context("a reply nobody waited for")?;
                lat.push(at.elapsed());
                if !raw.has_frame() {
                    refill = (depth - sent_at.len()).min(m - sent);
                }
            }
            anyhow::Ok(lat)
        }));
    }
    barrier.wait().await;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(n * m);
    for t in tasks {
        all.extend(t.await??);
    }
    let (ops, secs) = ((n * m) as f64, t0.elapsed().as_secs_f64());
    let note = format!("({n} connections, {depth} in flight each, one instance each)");
    report_run(
        args,
        "echo-pipelined",
        "rt_per_s",
        ops,
        secs,
        all,
        &cpu,
        &note,
    );
    Ok(())
}

/// One `broadcast:` at a time to `c` receivers; the next is sent once all
/// received the previous one.
pub(crate) async fn broadcast(args: &Arc<Args>, c: usize) -> Result<()> {
    let path = format!("/agents/counter-agent/bench-bcast-{}", unique());
    let broadcasts = (args.broadcast_deliveries / c.max(1)).max(1);
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut receivers = Vec::new();
    for i in 0..c {
        let mut raw = client::open_raw(&args.url, &format!("{path}?_pk=r{i}")).await?;
        let tx = tx.clone();
        let k = broadcasts;
        receivers.push(tokio::spawn(async move {
            for _ in 0..k {
                let idx = raw.next_numbered(b'b').await?;
                let _ = tx.send((idx, Instant::now()));
            }
            anyhow::Ok(raw)
        }));
    }
    let mut sender = client::open(&args.url, &format!("{path}?_pk=sender")).await?;
    client::handshake(&mut sender).await?;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(broadcasts);
    for k in 0..broadcasts {
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
    let (ops, secs) = ((c * broadcasts) as f64, t0.elapsed().as_secs_f64());
    let note = format!("({c} receivers; p50/p99: until all received; CPU per delivery)");
    let bench = format!("broadcast-{c}");
    report_run(
        args,
        &bench,
        "deliveries_per_s",
        ops,
        secs,
        lat,
        &cpu,
        &note,
    );
    for r in receivers {
        r.await??;
    }
    Ok(())
}

/// Bursts: one client writes `burst_size` `broadcast:` frames in one write;
/// every socket of the instance (listeners and the sender) gets them all.
pub(crate) async fn burst(args: &Arc<Args>) -> Result<()> {
    let (c, size, bursts) = (args.burst_listeners, args.burst_size, args.bursts);
    let path = format!("/agents/counter-agent/bench-burst-{}", unique());
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut listeners = Vec::new();
    for i in 0..c {
        let mut raw = client::open_raw(&args.url, &format!("{path}?_pk=l{i}")).await?;
        let tx = tx.clone();
        listeners.push(tokio::spawn(async move {
            for _ in 0..bursts {
                read_burst(&mut raw, size).await?;
                let _ = tx.send(Instant::now());
            }
            anyhow::Ok(())
        }));
    }
    let mut sender = client::open_raw(&args.url, &format!("{path}?_pk=sender")).await?;
    let mut frames = Vec::new();
    for j in 0..size {
        push_frame(&mut frames, 0x1, format!("broadcast:x{j}").as_bytes());
    }
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(bursts);
    for _ in 0..bursts {
        let sent = Instant::now();
        sender.send_raw(&frames).await?;
        read_burst(&mut sender, size).await?;
        let mut last = Instant::now();
        for _ in 0..c {
            last = last.max(rx.recv().await.context("listeners ended")?);
        }
        lat.push(last - sent);
    }
    let secs = t0.elapsed().as_secs_f64();
    for l in listeners {
        l.await??;
    }
    let ops = ((c + 1) * size * bursts) as f64;
    let note =
        format!("({size} frames per write to {c}+1 sockets; p50/p99: per burst; CPU per delivery)");
    report_run(
        args,
        "broadcast-burst",
        "deliveries_per_s",
        ops,
        secs,
        lat,
        &cpu,
        &note,
    );
    Ok(())
}

/// Reads one burst's frames `x0`..`x{size-1}`, in order.
async fn read_burst(raw: &mut Raw, size: usize) -> Result<()> {
    for j in 0..size {
        let got = raw.next_numbered(b'x').await?;
        ensure!(
            got == j,
            "burst frame x{got} arrived while waiting for x{j}"
        );
    }
    Ok(())
}

/// Connections opened and closed, 8 at a time: bare HTTP upgrade, the
/// identity frame, then a closing handshake.
pub(crate) async fn connect(args: &Arc<Args>) -> Result<()> {
    let total = args.connects;
    let port = args.port()?;
    let workers = 8;
    let run = unique();
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..total).step_by(workers) {
                let t = Instant::now();
                let path = format!("/agents/echo-agent/bench-connect-{run}-{}", i % 16);
                let mut raw = Raw::connect(port, &path).await?;
                while !raw
                    .next_text()
                    .await?
                    .starts_with(b"{\"type\":\"cf_agent_identity\"")
                {}
                lat.push(t.elapsed());
                raw.close().await?;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let (ops, secs) = (total as f64, t0.elapsed().as_secs_f64());
    let note = "(8 at a time, 16 instances)";
    report_run(
        args,
        "connect",
        "connects_per_s",
        ops,
        secs,
        all,
        &cpu,
        note,
    );
    Ok(())
}

fn status_kib(pid: &str, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad status line")?
        .parse()?)
}

/// Pages of memory the kernel's TCP sockets use (`/proc/net/sockstat`).
fn tcp_mem_pages() -> u64 {
    let stat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    stat.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mem")?;
            words.get(at + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Holds `idle` connections (100 echo instances) and reports the server's
/// RSS growth per connection, next to this client's (tokio-tungstenite
/// sockets) and the kernel's TCP buffer memory.
pub(crate) async fn idle(args: &Arc<Args>) -> Result<()> {
    let Some(pid) = args.server_pid.map(|p| p.to_string()) else {
        println!(
            "{:<10} {:<16} skipped (no --server-pid)",
            args.label, "idle-memory"
        );
        return Ok(());
    };
    let run = unique();
    let (before, client_before, tcp_before) = (
        status_kib(&pid, "VmRSS:")?,
        status_kib("self", "VmRSS:")?,
        tcp_mem_pages(),
    );
    let fds_before = open_fds(&pid);
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(args.idle);
    let mut errors = 0usize;
    let batch = 64;
    let mut i = 0;
    while i < args.idle {
        let mut pending = Vec::new();
        for j in i..(i + batch).min(args.idle) {
            let url = args.url.clone();
            pending.push(tokio::spawn(async move {
                let path = format!("/agents/echo-agent/bench-idle-{run}-{}", j % 100);
                let mut ws = client::open(&url, &path).await?;
                client::handshake(&mut ws).await?;
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
    let secs = t0.elapsed().as_secs_f64();
    let opened = cpu.figures(secs, held.len().max(1) as f64);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_kib(&pid, "VmRSS:")?;
    let client_after = status_kib("self", "VmRSS:")?;
    let tcp_after = tcp_mem_pages();
    // Every held connection still answers.
    let mut alive = 0usize;
    for ws in held.iter_mut().step_by(97) {
        ws.send(Message::text("ping?")).await?;
        client::until_text(ws, |t| t == "ping?").await?;
        alive += 1;
    }
    let n = held.len().max(1) as f64;
    let per = |a: u64, b: u64| (a.saturating_sub(b) as f64 * 1024.0) / n;
    let mut figures = vec![
        ("connections", held.len() as f64),
        ("errors", errors as f64),
        ("rss_growth_kib", after.saturating_sub(before) as f64),
        ("bytes_per_conn", per(after, before)),
        ("client_bytes_per_conn", per(client_after, client_before)),
        (
            "kernel_tcp_bytes_per_conn",
            tcp_after.saturating_sub(tcp_before) as f64 * 4096.0 / n,
        ),
        ("connects_per_s", n / secs),
    ];
    figures.extend(
        opened
            .into_iter()
            .filter(|(k, _)| *k == "server_us_per_op")
            .map(|(_, v)| ("server_us_per_connect", v)),
    );
    report(
        args,
        "idle-memory",
        &figures,
        &format!("({alive} sampled connections answered)"),
    );
    for mut ws in held {
        let _ = ws.close(None).await;
    }
    // Let the server take the sockets down before the next scenario.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(&pid) > fds_before + 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `rpc_connections` sockets on one counter-agent instance, each calling
/// `increment(1)` `rpc_calls` times in a row; every call sends the new state
/// to every socket of the instance, then the reply to the caller. A socket
/// is done once it has seen its last reply and the final state.
pub(crate) async fn rpc(args: &Arc<Args>) -> Result<()> {
    let (n, calls) = (args.rpc_connections, args.rpc_calls);
    let total = n * calls;
    let path = format!("/agents/counter-agent/bench-rpc-{}", unique());
    let last_state = Arc::new(format!(r#"{{"count":{total}}}}}"#).into_bytes());
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut raw = client::open_raw(&args.url, &format!("{path}?_pk=c{i}")).await?;
        let (barrier, last_state) = (barrier.clone(), last_state.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut lat = Vec::with_capacity(calls);
            let (mut states, mut done) = (0usize, false);
            for k in 0..calls {
                let id = format!("c{i}-{k}");
                let frame =
                    format!(r#"{{"type":"rpc","id":"{id}","method":"increment","args":[1]}}"#);
                let needle = format!(r#""id":"{id}""#);
                let t0 = Instant::now();
                raw.send_text(frame.as_bytes()).await?;
                loop {
                    let t = tokio::time::timeout(Duration::from_secs(10), raw.next_text())
                        .await
                        .context("no rpc reply within 10 s")??;
                    if t.starts_with(STATE_PREFIX) {
                        states += 1;
                        done |= t.ends_with(&last_state);
                        continue;
                    }
                    if memchr::memmem::find(t, needle.as_bytes()).is_some() {
                        ensure!(
                            memchr::memmem::find(t, br#""success":true"#).is_some(),
                            "rpc failed: {}",
                            String::from_utf8_lossy(t)
                        );
                        break;
                    }
                }
                lat.push(t0.elapsed());
            }
            while !done {
                let t = tokio::time::timeout(Duration::from_secs(10), raw.next_text())
                    .await
                    .context("final state not within 10 s")??;
                if t.starts_with(STATE_PREFIX) {
                    states += 1;
                    done = t.ends_with(&last_state);
                }
            }
            anyhow::Ok((lat, states))
        }));
    }
    barrier.wait().await;
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        let (lat, states) = t.await??;
        ensure!(
            states == total,
            "a socket saw {states} state updates for {total} calls"
        );
        all.extend(lat);
    }
    let (ops, secs) = (total as f64, t0.elapsed().as_secs_f64());
    let note = format!("({n} sockets on one instance; each call fans the state out to all {n})");
    report_run(args, "rpc", "calls_per_s", ops, secs, all, &cpu, &note);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Wait,
    Go,
    Stop,
}

/// Echo p99 on one instance, quiet, then while two other instances take
/// large `cf_agent_state` frames back to back (each with a listener that
/// gets the state broadcast; at most two states in flight per instance),
/// then quiet again. The neighbours run on their own thread of this tool.
pub(crate) async fn neighbour(args: &Arc<Args>) -> Result<()> {
    let run = unique();
    let path = format!("/agents/echo-agent/bench-nb-echo-{run}");
    let mut socks = Vec::new();
    for i in 0..args.neighbour_echo {
        socks.push((
            client::open_raw(&args.url, &path).await?,
            payload(i, args.size),
        ));
    }
    let (phase, phase_rx) = watch::channel(Phase::Wait);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (url, bytes, rate) = (
        args.url.clone(),
        args.neighbour_state_bytes,
        args.neighbour_rate,
    );
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(neighbours(url, run, bytes, rate, phase_rx, ready_tx))
    });
    ready_rx.await.context("neighbours failed to start")?;
    let secs = Duration::from_secs_f64(args.neighbour_secs);

    let (quiet1, socks, cpu_quiet1) = echo_phase(args, socks, secs).await?;
    phase.send_replace(Phase::Go);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (loaded, socks, cpu_loaded) = echo_phase(args, socks, secs).await?;
    phase.send_replace(Phase::Stop);
    let (states, state_secs) = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("neighbour thread panicked"))??;
    let (quiet2, _socks, cpu_quiet2) = echo_phase(args, socks, secs).await?;

    let loaded_rts = loaded.len() as f64;
    let quiet_rts = (quiet1.len() + quiet2.len()) as f64;
    let quiet_us = (cpu_quiet1.0 + cpu_quiet2.0) * 1e6 / quiet_rts;
    let quiet = summarize([quiet1, quiet2].concat());
    let busy = summarize(loaded);
    let mut figures = vec![
        ("p50_quiet_us", quiet.p50),
        ("p99_quiet_us", quiet.p99),
        ("p50_loaded_us", busy.p50),
        ("p99_loaded_us", busy.p99),
        ("p99_ratio", busy.p99 / quiet.p99.max(1.0)),
        ("rt_per_s_quiet", quiet_rts / (2.0 * secs.as_secs_f64())),
        ("rt_per_s_loaded", loaded_rts / secs.as_secs_f64()),
        ("states_per_s", states as f64 / state_secs.max(1e-9)),
        ("client_cpu_pct_loaded", cpu_loaded.2),
    ];
    if args.server_pid.is_some() {
        figures.push(("server_us_per_op", quiet_us));
        figures.push(("server_cpu_pct_loaded", cpu_loaded.1));
        // Server CPU of the loaded phase beyond what its echo round trips
        // cost when quiet, per state taken.
        let extra = cpu_loaded.0 - loaded_rts * quiet_us / 1e6;
        let per_state = states as f64 / state_secs.max(1e-9) * secs.as_secs_f64();
        figures.push((
            "server_us_per_state",
            extra.max(0.0) * 1e6 / per_state.max(1.0),
        ));
    }
    report(
        args,
        "neighbour",
        &figures,
        &format!(
            "({} echo sockets; 2 neighbours × {} KiB states, {})",
            args.neighbour_echo,
            bytes / 1024,
            if rate > 0.0 {
                format!("{rate}/s each")
            } else {
                "back to back".to_owned()
            }
        ),
    );
    Ok(())
}

/// Echo sockets doing round trips for `secs`: their latencies, the sockets,
/// and (server CPU seconds, server %, client %) over the phase.
async fn echo_phase(
    args: &Args,
    socks: Vec<(Raw, Vec<u8>)>,
    secs: Duration,
) -> Result<(Vec<Duration>, Vec<(Raw, Vec<u8>)>, (f64, f64, f64))> {
    let cpu = Cpu::start(args);
    let t0 = Instant::now();
    let until = t0 + secs;
    let mut tasks = Vec::new();
    for (mut raw, payload) in socks {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                raw.send_text(&payload).await?;
                while raw.next_text().await? != payload.as_slice() {}
                lat.push(t.elapsed());
            }
            anyhow::Ok((lat, raw, payload))
        }));
    }
    let (mut all, mut back) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, raw, payload) = t.await??;
        all.extend(lat);
        back.push((raw, payload));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let figures = cpu.figures(elapsed, 1.0);
    let get = |k: &str| figures.iter().find(|(n, _)| *n == k).map_or(0.0, |f| f.1);
    Ok((
        all,
        back,
        (
            cpu.server_secs(),
            get("server_cpu_pct"),
            get("client_cpu_pct"),
        ),
    ))
}

/// The two neighbour instances: a writer sending `bytes`-sized states (at
/// `rate` per second, or back to back when 0) and a listener receiving
/// their broadcast, each. Returns the states received while running and for
/// how long.
async fn neighbours(
    url: String,
    run: u128,
    bytes: usize,
    rate: f64,
    mut phase: watch::Receiver<Phase>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(u64, f64)> {
    let mut pairs = Vec::new();
    for k in 0..2 {
        let path = format!("/agents/echo-agent/bench-nb-{k}-{run}");
        let writer = client::open_raw(&url, &format!("{path}?_pk=writer")).await?;
        let listener = client::open_raw(&url, &format!("{path}?_pk=listener")).await?;
        pairs.push((writer, listener));
    }
    let _ = ready.send(());
    phase.wait_for(|p| *p != Phase::Wait).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut listeners = Vec::new();
    for (mut writer, mut listener) in pairs {
        let (ack, mut acks) = mpsc::unbounded_channel::<()>();
        listeners.push(tokio::spawn(async move {
            loop {
                if listener.next_text().await?.starts_with(STATE_PREFIX) {
                    let _ = ack.send(());
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }));
        let mut phase = phase.clone();
        tasks.push(tokio::spawn(async move {
            let blob = "a".repeat(bytes.saturating_sub(64));
            let state = format!(r#"{{"blob":"{blob}","seq":"0000000000"}}"#);
            let text = format!(r#"{{"type":"cf_agent_state","state":{state}}}"#);
            let mut frame = Vec::with_capacity(text.len() + 14);
            push_frame(&mut frame, 0x1, text.as_bytes());
            let seq_at = frame.len() - 13;
            let (mut in_flight, mut acked, mut seq) = (0u32, 0u64, 0u64);
            let stopped = loop {
                if *phase.borrow_and_update() == Phase::Stop {
                    break t0.elapsed().as_secs_f64();
                }
                if in_flight < 2 {
                    if rate > 0.0 {
                        let at = t0 + Duration::from_secs_f64(seq as f64 / rate);
                        tokio::select! {
                            _ = tokio::time::sleep_until(at.into()) => {}
                            _ = phase.changed() => continue,
                        }
                    }
                    seq += 1;
                    frame[seq_at..seq_at + 10].copy_from_slice(format!("{seq:010}").as_bytes());
                    writer.send_raw(&frame).await?;
                    in_flight += 1;
                    continue;
                }
                tokio::select! {
                    got = tokio::time::timeout(Duration::from_secs(10), acks.recv()) => {
                        got.context("no state broadcast within 10 s")?.context("listener ended")?;
                        in_flight -= 1;
                        acked += 1;
                    }
                    _ = phase.changed() => {}
                }
            };
            let counted = acked;
            while in_flight > 0 {
                tokio::time::timeout(Duration::from_secs(10), acks.recv())
                    .await
                    .context("no state broadcast within 10 s")?
                    .context("listener ended")?;
                in_flight -= 1;
            }
            anyhow::Ok((counted, stopped, writer))
        }));
    }
    let mut states = 0;
    let mut elapsed = 0.0;
    for t in tasks {
        let (n, stopped, _writer) = t.await??;
        states += n;
        elapsed = f64::max(elapsed, stopped);
    }
    for l in listeners {
        l.abort();
    }
    Ok((states, elapsed))
}
