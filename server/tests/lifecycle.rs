//! Hooks, connection ids, the request context, closing and shutdown.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::util::*;

#[tokio::test]
async fn connect_context_carries_the_request() {
    let (server, log) = start_with_probe().await;
    let mut req = server
        .url("/agents/probe-agent/p1/sub?_pk=abc&token=t%201")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", "session=s3cr3t; other=1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let _ = &mut ws;
    assert_eq!(
        wait_for(&log, "connect ").await,
        "connect abc p1 /agents/probe-agent/p1/sub?_pk=abc&token=t%201"
    );
    assert_eq!(
        wait_for(&log, "url ").await,
        format!(
            "url http://{}/agents/probe-agent/p1/sub?_pk=abc&token=t%201",
            server.addr
        )
    );
    assert_eq!(wait_for(&log, "cookie ").await, r#"cookie Some("s3cr3t")"#);
}

#[tokio::test]
async fn connection_ids_come_from_pk_or_are_generated() {
    let (server, log) = start_with_probe().await;
    for path in ["/agents/probe-agent/ids", "/agents/probe-agent/ids?_pk="] {
        let mut c = server.connect(path).await;
        c.handshake().await;
        c.send("count").await;
        c.text().await;
    }
    let ids: Vec<String> = log_lines(&log)
        .iter()
        .filter_map(|l| {
            l.strip_prefix("connect ")
                .map(|r| r.split(' ').next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert_eq!(id.len(), 21, "{id}");
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn tags_lookup_and_broadcast_exclusion() {
    let (server, log) = start_with_probe().await;
    let mut a1 = server
        .connect("/agents/probe-agent/t?_pk=a&tags=red,blue")
        .await;
    let mut a2 = server.connect("/agents/probe-agent/t?_pk=a").await;
    let mut b = server.connect("/agents/probe-agent/t?_pk=b&tags=red").await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.handshake().await;
    }
    assert_eq!(
        wait_for(&log, "tags [\"a\", \"red\"").await,
        r#"tags ["a", "red", "blue"]"#
    );
    b.send("tagged:red").await;
    assert_eq!(b.text().await, "tagged 2");
    b.send("lookup:b").await;
    assert_eq!(b.text().await, "found b");
    b.send("lookup:zzz").await;
    assert_eq!(b.text().await, "none");
    b.send("lookup:a").await;
    assert_eq!(b.text().await, "More than one connection found for id a");
    // Excluding id `a` skips both sockets that share it.
    a1.send("others:hello").await;
    assert_eq!(b.text().await, "hello");
    a1.sentinel().await;
    a2.sentinel().await;
}

#[tokio::test]
async fn protocol_frames_never_reach_on_message() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/pf").await;
    c.handshake().await;
    c.send(r#"{"type":"rpc","id":"1","method":"x","args":[]}"#)
        .await;
    assert_eq!(c.json().await["error"], "Method x does not exist");
    c.send(r#"{"type":"cf_agent_state","state":{"a":1}}"#).await;
    c.send("after").await;
    wait_for(&log, "message after").await;
    let messages: Vec<_> = log_lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("message"))
        .collect();
    assert_eq!(messages, ["message after"]);
}

/// A frame sent the instant the socket opens is handled after the connect frames.
#[tokio::test]
async fn a_frame_sent_at_open_is_answered_after_the_connect_frames() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/agents/echo-agent/fast"))
        .await
        .unwrap();
    ws.send(Ws::text("first")).await.unwrap();
    let mut c = Client { ws };
    c.handshake().await;
    assert_eq!(c.text().await, "first");
}

#[tokio::test]
async fn client_close_is_echoed_and_reported() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/cl?_pk=closer").await;
    c.handshake().await;
    c.close(4001, "custom").await;
    assert_eq!(c.closed().await, (4001, "custom".into()));
    assert_eq!(
        wait_for(&log, "close closer").await,
        r#"close closer 4001 "custom" true"#
    );
}

#[tokio::test]
async fn agent_close_reaches_the_client() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/ac?_pk=x").await;
    c.handshake().await;
    c.send("close:4003").await;
    assert_eq!(c.closed().await, (4003, "closed by agent".into()));
    assert_eq!(
        wait_for(&log, "close x").await,
        r#"close x 4003 "closed by agent" true"#
    );
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/echo-agent/ping").await;
    c.handshake().await;
    c.ws.send(Ws::Ping("hi".into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ws::Pong(payload) = msg {
            assert_eq!(&payload[..], b"hi");
            break;
        }
    }
}

#[tokio::test]
async fn subprotocol_offered_is_selected() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut req = server
        .url("/agents/echo-agent/sp")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "token.abc, other".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "token.abc");
}

#[tokio::test]
async fn before_connect_hook_can_refuse_or_annotate() {
    let log = Log::default();
    let server = server_with_probe(&log).on_before_connect(|mut req, route| async move {
        assert_eq!(&*route.class_name, "ProbeAgent");
        match req.query("token") {
            Some("good") => {
                req.headers_mut().insert("x-user", "alice".parse().unwrap());
                Ok(req)
            }
            _ => Err((http::StatusCode::UNAUTHORIZED, "no token").into_response()),
        }
    });
    use axum::response::IntoResponse;
    let server = TestServer::start(server).await;
    let err = tokio_tungstenite::connect_async(server.url("/agents/probe-agent/auth"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other}"),
    }
    let mut c = server.connect("/agents/probe-agent/auth?token=good").await;
    c.handshake().await;
    assert_eq!(wait_for(&log, "header ").await, r#"header Some("alice")"#);
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_1001() {
    let (server, log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/s1?_pk=a").await;
    let mut b = server.connect("/agents/echo-agent/s2").await;
    a.handshake().await;
    b.handshake().await;
    let closing = tokio::spawn(async move {
        let ca = a.closed().await;
        let cb = b.closed().await;
        (ca, cb)
    });
    server.shutdown().await;
    let (ca, cb) = closing.await.unwrap();
    assert_eq!(ca, (1001, "Server shutting down".into()));
    assert_eq!(cb, (1001, "Server shutting down".into()));
    // on_close ran before serve returned.
    assert!(
        log_lines(&log)
            .iter()
            .any(|l| l.starts_with("close a 1001")),
        "{:?}",
        log_lines(&log)
    );
}

#[tokio::test]
async fn idle_instances_are_evicted_and_recreated() {
    let log = Log::default();
    let server =
        TestServer::start(server_with_probe(&log).idle_timeout(Duration::from_millis(100))).await;
    let mut c = server.connect("/agents/counter-agent/idle").await;
    c.handshake().await;
    assert_eq!(server.agents.instance_count(), 1);
    c.close(1000, "").await;
    c.closed().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.agents.instance_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance was not evicted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = server.connect("/agents/counter-agent/idle").await;
    c.handshake().await;
    assert_eq!(server.agents.instance_count(), 1);
}

/// Many clients racing an instance that is being evicted all end up connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_racing_eviction_are_not_lost() {
    let server =
        TestServer::start(agents_server_cli::demo::server().idle_timeout(Duration::from_millis(1)))
            .await;
    for round in 0..20u64 {
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..8 {
            let url = server.url(&format!("/agents/echo-agent/race?r={round}&i={i}"));
            clients.spawn(async move {
                tokio::time::sleep(Duration::from_millis((i * round) % 3)).await;
                let mut c = Client::connect(&url).await;
                c.handshake().await;
                c.send("still here").await;
                assert_eq!(c.text().await, "still here");
                c.close(1000, "").await;
                c.closed().await;
            });
        }
        while let Some(done) = tokio::time::timeout(WAIT, clients.join_next())
            .await
            .expect("a racing client hung")
        {
            done.unwrap();
        }
    }
}

/// `on_start` runs once per instance, before its first connection.
#[tokio::test]
async fn on_start_runs_before_the_first_connection() {
    let (server, log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/started?_pk=a").await;
    let mut b = server.connect("/agents/probe-agent/started?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    wait_for(&log, "connect b").await;
    let lines = log_lines(&log);
    let starts: Vec<_> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("start "))
        .collect();
    assert_eq!(starts.len(), 1, "{lines:?}");
    let first_connect = lines
        .iter()
        .position(|l| l.starts_with("connect "))
        .unwrap();
    assert!(starts[0].0 < first_connect, "{lines:?}");
}

/// Per-connection state lives on the connection, separate for each socket.
#[tokio::test]
async fn per_connection_state() {
    let (server, _log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/cstate?_pk=a").await;
    let mut b = server.connect("/agents/probe-agent/cstate?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send("cstate?").await;
    assert_eq!(a.text().await, "unset");
    a.send("cstate:alice").await;
    a.send("cstate?").await;
    assert_eq!(a.text().await, "alice");
    b.send("cstate?").await;
    assert_eq!(b.text().await, "unset");
}
