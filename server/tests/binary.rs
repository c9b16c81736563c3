//! The `agents-server` binary: static files, and SIGTERM → close 1001.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::util::*;

#[tokio::test]
async fn binary_serves_static_files_and_shuts_down_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("agents-rs-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>hello app</h1>").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_agents-server"))
        .args(["--port", "0", "--log", "warn", "--static-dir"])
        .arg(&dir)
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
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

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
