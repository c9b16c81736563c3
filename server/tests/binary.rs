//! The `agents-server` binary: static files, and SIGTERM → close 1001.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::util::*;

/// Starts the binary on a free port with `args`; returns it and its address.
async fn spawn_server(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agents-server"))
        .args(["--port", "0", "--log", "warn"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, addr)
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
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(c.closed().await, (1001, "Server shutting down".into()));
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
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
