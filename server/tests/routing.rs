//! URLs and HTTP results, as in `reference-edge-cases.log` §4–5.

use agents_server::{Agent, AgentServer};
use axum::response::IntoResponse;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

#[tokio::test]
async fn http_results_match_the_reference() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    assert_eq!(
        server.get("/agents/unknown-agent/x?_pk=x").await,
        (400, "Invalid request".into())
    );
    assert_eq!(
        server.get("/agents/EchoAgent/caps").await,
        (400, "Invalid request".into())
    );
    assert_eq!(
        server.get("/agents/echo-agent?_pk=x").await,
        (404, "Not found".into())
    );
    assert_eq!(
        server.get("/agents/echo-agent/a").await,
        (404, "Not implemented".into())
    );
    assert_eq!(
        server.get("/agents/counter-agent/p").await,
        (200, r#"{"count":0}"#.into())
    );
}

/// Names up to `MAX_NAME_LEN` bytes are served; one byte more is refused.
#[tokio::test]
async fn name_length_boundary() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let longest = "n".repeat(agents_server::MAX_NAME_LEN);
    let mut c = server
        .connect(&format!("/agents/echo-agent/{longest}"))
        .await;
    let (identity, _) = c.handshake().await;
    assert_eq!(identity["name"], longest.as_str());
    assert_eq!(
        server.get(&format!("/agents/echo-agent/{longest}")).await,
        (404, "Not implemented".into())
    );
    let too_long = format!("{longest}n");
    assert_eq!(
        server.get(&format!("/agents/echo-agent/{too_long}")).await,
        (400, "Invalid request".into())
    );
    let err =
        tokio_tungstenite::connect_async(server.url(&format!("/agents/echo-agent/{too_long}")))
            .await
            .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            assert_eq!(resp.body().as_deref(), Some(&b"Invalid request"[..]));
        }
        other => panic!("expected HTTP 400, got {other}"),
    }
}

#[tokio::test]
async fn unknown_agent_upgrade_is_refused_with_400() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let err = tokio_tungstenite::connect_async(server.url("/agents/nope-agent/x"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            assert_eq!(resp.body().as_deref(), Some(&b"Invalid request"[..]));
        }
        other => panic!("expected HTTP 400, got {other}"),
    }
}

/// The name is the raw, still percent-encoded segment; empty segments are
/// ignored; a sub-path reaches the same instance.
#[tokio::test]
async fn names_are_raw_segments_and_paths_are_lenient() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server
        .connect("/agents/echo-agent/with%20space?_pk=x")
        .await;
    let (identity, _) = c.handshake().await;
    assert_eq!(identity["name"], "with%20space");

    let mut c = server.connect("/agents//echo-agent//n").await;
    let (identity, _) = c.handshake().await;
    assert_eq!(identity["name"], "n");
    assert_eq!(identity["agent"], "echo-agent");

    let mut a = server.connect("/agents/counter-agent/shared").await;
    let mut b = server
        .connect("/agents/counter-agent/shared/settings/deep?x=1")
        .await;
    a.handshake().await;
    let (identity, _) = b.handshake().await;
    assert_eq!(identity["name"], "shared");
    b.send("broadcast:same-instance").await;
    assert_eq!(a.text().await, "same-instance");
}

struct Http;

impl Agent for Http {
    type State = ();

    async fn on_request(
        &mut self,
        cx: &mut agents_server::AgentContext<Self>,
        request: http::Request<axum::body::Body>,
    ) -> Result<axum::response::Response, agents_server::BoxError> {
        if request.uri().path().ends_with("/boom") {
            panic!("request exploded");
        }
        Ok(format!("hello from {} at {}", cx.name(), request.uri().path()).into_response())
    }
}

/// Class names map to URLs by the reference's kebab rule; `on_request`
/// answers plain HTTP; a panic there is a 500.
#[tokio::test]
async fn kebab_routes_and_on_request() {
    let server = TestServer::start(
        AgentServer::new()
            .agent("AIAssistant", |_| Http)
            .prefix("api/v1"),
    )
    .await;
    assert_eq!(
        server.get("/api/v1/a-i-assistant/bob/x").await,
        (200, "hello from bob at /api/v1/a-i-assistant/bob/x".into())
    );
    assert_eq!(server.get("/api/v1/ai-assistant/bob").await.0, 400);
    assert_eq!(server.get("/api/v1/a-i-assistant/bob/boom").await.0, 500);
    // The instance survived the panic.
    assert_eq!(server.get("/api/v1/a-i-assistant/bob").await.0, 200);
}

#[test]
#[should_panic(expected = "two agents are registered at `my-agent`")]
fn colliding_class_names_are_refused() {
    let _ = AgentServer::new()
        .agent("MyAgent", |_| Http)
        .agent("my_agent", |_| Http);
}

/// The agents' router merges into an app that has routes of its own.
#[tokio::test]
async fn router_mounts_into_a_users_app() {
    let agents = agents_server_cli::demo::server().build();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .merge(agents.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = agents.clone();
    let task =
        tokio::spawn(async move { serving.serve(listener, app, std::future::pending()).await });
    assert_eq!(http_get(addr, "/health", &[]).await, (200, "ok".into()));
    let mut c = Client::connect(&format!("ws://{addr}/agents/echo-agent/mounted")).await;
    c.handshake().await;
    c.send("inside an app").await;
    assert_eq!(c.text().await, "inside an app");
    let stopping = tokio::spawn(async move { agents.shutdown().await });
    assert_eq!(c.closed().await.0, 1001);
    stopping.await.unwrap();
    task.abort();
}

/// The router served by another loop than `Agents::serve` (here
/// `axum::serve`): upgrades go through hyper's, and sockets work the same.
#[tokio::test]
async fn router_serves_sockets_under_another_loop() {
    let agents = agents_server_cli::demo::server().build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = agents.router();
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut c = Client::connect(&format!("ws://{addr}/agents/echo-agent/elsewhere")).await;
    c.handshake().await;
    c.send("through hyper").await;
    assert_eq!(c.text().await, "through hyper");
    assert_eq!(
        http_get(addr, "/agents/unknown-agent/x", &[]).await,
        (400, "Invalid request".into())
    );
    let stopping = tokio::spawn(async move { agents.shutdown().await });
    assert_eq!(c.closed().await.0, 1001);
    stopping.await.unwrap();
    task.abort();
}

/// `serve` answers a first request that is an agent's upgrade itself, and
/// leaves the rest to the app: an upgrade after a plain request on a
/// kept-alive connection, a frame sent in the same write as the upgrade
/// request, an upgrade to a path of the app's own.
#[tokio::test]
async fn upgrades_with_and_without_the_app() {
    let agents = agents_server_cli::demo::server().build();
    // Counts the upgrade requests that went through the app.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/other-ws", axum::routing::get(|| async { "not a socket" }))
        .merge(agents.router())
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                if request.headers().contains_key("upgrade") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                next.run(request)
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = agents.clone();
    let task =
        tokio::spawn(async move { serving.serve(listener, app, std::future::pending()).await });
    let echoes = |mut raw: Raw, text: &'static str| async move {
        raw.write(&Raw::frame(true, 1, text.as_bytes())).await;
        loop {
            match raw.next_frame().await {
                Some((1, p)) if p == text.as_bytes() => return raw,
                Some(_) => continue,
                None => panic!("closed before the echo of {text}"),
            }
        }
    };

    // A plain request first, then an upgrade on the same connection.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok") {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after the plain request");
        answer.extend_from_slice(&chunk[..n]);
    }
    let (status, raw) = Raw::try_upgrade(tcp, addr, "/agents/echo-agent/kept", &[], &[]).await;
    assert_eq!(status, 101);
    let _kept = echoes(raw, "after a plain request").await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the app answers a later upgrade"
    );

    // The first frame in the same write as the request.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = Raw::frame(true, 1, b"in the same write");
    let (status, mut raw) =
        Raw::try_upgrade(tcp, addr, "/agents/echo-agent/eager", &[], &first).await;
    assert_eq!(status, 101);
    loop {
        match raw.next_frame().await {
            Some((1, p)) if p == b"in the same write" => break,
            Some(_) => continue,
            None => panic!("closed before the early frame's echo"),
        }
    }

    assert_eq!(seen.load(Ordering::SeqCst), 1, "answered without the app");

    // Upgrades the agents do not own are the app's (or the router's) to
    // answer; so are ones with a body or another method.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, _) = Raw::try_upgrade(tcp, addr, "/other-ws", &[], &[]).await;
    assert_eq!(status, 200);
    let (status, _) = Raw::try_connect(addr, "/agents/unknown-agent/x", &[], None).await;
    assert_eq!(status, 400);
    let (status, _) = Raw::try_connect(
        addr,
        "/agents/echo-agent/b",
        &[("content-length", "0")],
        None,
    )
    .await;
    assert_eq!(status, 101);
    assert_eq!(seen.load(Ordering::SeqCst), 4);
    // Refused without the app, as the router would.
    let (status, _) = Raw::try_connect(addr, "/agents/echo-agent", &[], None).await;
    assert_eq!(status, 404);
    let long = format!("/agents/echo-agent/{}", "n".repeat(10_000));
    let (status, _) = Raw::try_connect(addr, &long, &[], None).await;
    assert_eq!(status, 400);
    assert_eq!(seen.load(Ordering::SeqCst), 4);
    task.abort();
}

/// A refusal `serve` writes itself is a whole HTTP answer: status, length,
/// body, then the connection closes cleanly (no reset), even when the
/// client sends a frame after it.
#[tokio::test]
async fn direct_refusals_are_whole_answers() {
    let server = TestServer::start(
        agents_server_cli::demo::server().allowed_origins(["https://good.example"]),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (status, mut raw) = Raw::try_upgrade(
        tcp,
        server.addr,
        "/agents/echo-agent/o",
        &[("origin", "https://evil.example")],
        &[],
    )
    .await;
    assert_eq!(status, 403);
    // A frame sent after the answer: unread at the close, it would make
    // the close a reset.
    raw.write(&Raw::frame(true, 1, &[b'x'; 1000])).await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, raw.tcp.read_to_end(&mut rest))
        .await
        .expect("the refused connection was not closed")
        .expect("the refused connection was reset");
    let head = raw.head().to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-length: 18\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(raw.body_and(&rest), b"Origin not allowed");

    // A frame that arrives while a hook decides, unread when the refusal
    // goes out: the answer still arrives whole (a reset would lose it).
    let slow = TestServer::start(agents_server_cli::demo::server().on_before_connect(
        |_, _| async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Err((axum::http::StatusCode::UNAUTHORIZED, "no").into_response())
        },
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(slow.addr).await.unwrap();
    let request = Raw::upgrade_request(slow.addr, "/agents/echo-agent/h", &[]);
    tcp.write_all(&request).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tcp.write_all(&Raw::frame(true, 1, &[b'x'; 1000]))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the refused connection was not closed")
        .expect("the refused connection was reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nno"), "{answer}");
}

/// The README's limits table states every default the code has.
#[test]
fn the_readme_limits_table_matches_the_defaults() {
    let readme = include_str!("../../README.md");
    let table: Vec<&str> = readme
        .split("### Limits and results")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect();
    let row = |name: &str| -> String {
        table
            .iter()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("no README row for {name}"))
            .split('|')
            .nth(2)
            .unwrap()
            .trim()
            .to_owned()
    };
    let mib = |n: usize| format!("{} MiB", n / (1024 * 1024));
    let secs = |d: std::time::Duration| format!("{} s", d.as_secs());
    use agents_server::*;
    assert_eq!(row("max_message_size"), mib(DEFAULT_MAX_MESSAGE_SIZE));
    assert_eq!(row("max_state_bytes"), mib(DEFAULT_MAX_STATE_BYTES));
    assert_eq!(row("max_connections"), "20,000");
    assert_eq!(DEFAULT_MAX_CONNECTIONS, 20_000);
    assert_eq!(row("max_connections_per_instance"), "20,000");
    assert_eq!(DEFAULT_MAX_CONNECTIONS_PER_INSTANCE, 20_000);
    assert_eq!(row("max_instances"), "10,000");
    assert_eq!(DEFAULT_MAX_INSTANCES, 10_000);
    assert_eq!(
        row("outbound_queue_bytes"),
        format!(
            "{} / {DEFAULT_OUTBOUND_QUEUE} frames per client",
            mib(DEFAULT_OUTBOUND_QUEUE_BYTES)
        )
    );
    assert_eq!(
        row("slow_consumer_timeout"),
        secs(DEFAULT_SLOW_CONSUMER_TIMEOUT)
    );
    assert_eq!(
        row("inbox_bytes"),
        format!(
            "{} / {DEFAULT_INBOX_CAPACITY} events per instance",
            mib(DEFAULT_INBOX_BYTES)
        )
    );
    assert_eq!(
        row("max_unfinished_bytes"),
        format!("{} server-wide", mib(DEFAULT_MAX_UNFINISHED_BYTES))
    );
    assert_eq!(
        row("message_timeout"),
        format!(
            "{} / {}",
            secs(DEFAULT_MESSAGE_TIMEOUT),
            secs(DEFAULT_MESSAGE_IDLE_TIMEOUT)
        )
    );
    assert_eq!(row("ping_interval"), secs(DEFAULT_PING_INTERVAL));
    assert_eq!(
        row("max_request_head"),
        format!("{} KiB", DEFAULT_MAX_REQUEST_HEAD / 1024)
    );
    assert_eq!(
        row("header_read_timeout"),
        secs(DEFAULT_HEADER_READ_TIMEOUT)
    );
    assert_eq!(row("shutdown_timeout"), secs(DEFAULT_SHUTDOWN_TIMEOUT));
    assert_eq!(row("idle_timeout"), secs(DEFAULT_IDLE_TIMEOUT));
    assert!(readme.contains(&format!("| instance name length | {MAX_NAME_LEN} bytes |")));
    assert!(readme.contains(&format!("| log fields | {MAX_LOG_FIELD} bytes |")));
}

/// The defaults apply when nothing is set: a message of exactly the
/// default limit round-trips, one byte more is refused with 1009.
#[tokio::test]
async fn the_default_message_limit_applies() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/echo-agent/default-limit").await;
    c.handshake().await;
    let max = agents_server::DEFAULT_MAX_MESSAGE_SIZE;
    c.send_binary(&vec![3u8; max]).await;
    assert_eq!(c.binary().await.len(), max);
    c.send_binary(&vec![3u8; max + 1]).await;
    assert_eq!(
        c.closed().await,
        (1009, format!("Message is too large: {} > {max}", max + 1))
    );
}
