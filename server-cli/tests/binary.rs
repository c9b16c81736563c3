//! The `agents-server` binary: static files, signals, environment
//! variables, durability across a crash.

#![allow(missing_docs)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[allow(unused_imports)]
#[path = "../../server/tests/util.rs"]
mod util;

use util::*;

/// Starts the binary on a free port with `args`; returns it and its address.
async fn spawn_server(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agents-server"));
    cmd.args(["--port", "0", "--log", "warn"]).args(args);
    spawn(cmd).await
}

/// Spawns `cmd` (stdout piped, killed on drop) and reads the address from
/// its `listening on` line.
async fn spawn(mut cmd: Command) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no listening line in time")
        .unwrap()
        .expect("the server exited before listening");
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, addr)
}

/// Sends `signal` to the child process.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded) for the child to exit and requires success.
async fn exits_cleanly(child: &mut tokio::process::Child) {
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the server did not exit in time")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

/// A fresh temporary directory for one test.
fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agents-rs-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn binary_serves_static_files_and_shuts_down_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("agents-rs-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>hello app</h1>").unwrap();

    let (mut child, addr) = spawn_server(&[
        "--in-memory".as_ref(),
        "--static-dir".as_ref(),
        dir.as_os_str(),
    ])
    .await;

    assert_eq!(
        http_get(addr, "/", &[]).await,
        (200, "<h1>hello app</h1>".into())
    );
    // Client-side routes fall back to index.html; agent routes still win.
    assert_eq!(
        http_get(addr, "/some/page", &[]).await.1,
        "<h1>hello app</h1>"
    );
    assert_eq!(
        http_get(addr, "/agents/nope/x", &[]).await,
        (400, "Invalid request".into())
    );

    let mut c = Client::connect(&format!("ws://{addr}/agents/counter-agent/bin")).await;
    c.handshake().await;
    signal(&child, "TERM");
    assert_eq!(c.closed().await, (1001, "Server shutting down".into()));
    exits_cleanly(&mut child).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// State survives SIGKILL: kill the server right after `increment`, start it
/// again on the same data directory, reconnect, and the count is there.
#[tokio::test]
async fn state_survives_sigkill_and_restart() {
    let dir = std::env::temp_dir().join(format!("agents-rs-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = ["--data-dir".as_ref(), dir.as_os_str()];
    let start = || spawn_server(&args);
    let (mut child, addr) = start().await;
    let mut c = Client::connect(&format!("ws://{addr}/agents/counter-agent/durable")).await;
    c.handshake().await;
    c.send(r#"{"type":"rpc","id":"1","method":"increment","args":[7]}"#)
        .await;
    assert_eq!(c.json().await["state"]["count"], 7);
    assert_eq!(c.json().await["result"], 7);
    child.kill().await.unwrap(); // SIGKILL
    let (_child, addr) = start().await;
    let mut c = Client::connect(&format!("ws://{addr}/agents/counter-agent/durable")).await;
    assert_eq!(c.handshake().await.1, Some(serde_json::json!({"count": 7})));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGINT (Ctrl-C) shuts down like SIGTERM: every socket gets 1001.
#[tokio::test]
async fn sigint_closes_sockets_with_1001() {
    let (mut child, addr) = spawn_server(&["--in-memory".as_ref()]).await;
    let mut c = Client::connect(&format!("ws://{addr}/agents/echo-agent/int")).await;
    c.handshake().await;
    signal(&child, "INT");
    assert_eq!(c.closed().await, (1001, "Server shutting down".into()));
    exits_cleanly(&mut child).await;
}

/// Every flag can be given as an `AGENTS_*` environment variable instead.
#[tokio::test]
async fn environment_variables_configure_the_binary() {
    let site = temp_dir("env-site");
    std::fs::write(site.join("index.html"), "from env").unwrap();
    let data = temp_dir("env-data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agents-server"));
    cmd.env("AGENTS_HOST", "127.0.0.1")
        .env("AGENTS_PORT", "0")
        .env("AGENTS_STATIC_DIR", &site)
        .env("AGENTS_DATA_DIR", &data)
        .env("AGENTS_LOG", "agents_server=debug")
        .env("AGENTS_IDLE_TIMEOUT", "1")
        .stderr(Stdio::piped());
    let (mut child, addr) = spawn(cmd).await;
    assert!(addr.ip().is_loopback());
    assert_eq!(http_get(addr, "/", &[]).await, (200, "from env".into()));
    let mut c = Client::connect(&format!("ws://{addr}/agents/counter-agent/env")).await;
    c.handshake().await;
    c.close(1000, "").await;
    c.closed().await;
    // AGENTS_LOG=debug shows the eviction that AGENTS_IDLE_TIMEOUT=1 causes.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("evicting idle instance") {
                return;
            }
        }
        panic!("stderr ended without an eviction line");
    })
    .await
    .expect("no eviction within 10 s of AGENTS_IDLE_TIMEOUT=1");
    assert!(
        data.join("agents.sqlite3").is_file(),
        "AGENTS_DATA_DIR unused"
    );
    signal(&child, "TERM");
    exits_cleanly(&mut child).await;

    // AGENTS_IN_MEMORY: nothing is written, not even the default ./data.
    let cwd = temp_dir("env-memory");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agents-server"));
    cmd.current_dir(&cwd)
        .env("AGENTS_PORT", "0")
        .env("AGENTS_LOG", "warn")
        .env("AGENTS_IN_MEMORY", "true");
    let (mut child, addr) = spawn(cmd).await;
    let mut c = Client::connect(&format!("ws://{addr}/agents/counter-agent/mem")).await;
    c.handshake().await;
    signal(&child, "TERM");
    exits_cleanly(&mut child).await;
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "files written");
    for dir in [site, data, cwd] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
