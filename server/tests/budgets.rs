//! Bounded by bytes and by time: each abuse of issue #10 reproduced against
//! a small budget, and the bounded outcome (a refusal, a close code, a
//! client that keeps everything it should get).

use std::time::Duration;

use agents_server::{Agent, AgentContext, AgentServer, BoxError, Connection, Cors, Message};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::util::*;

// ---- 1. state bombs ----

/// A client state over the default 2 MiB is refused before it is parsed:
/// the sender gets `cf_agent_state_error`, nothing is stored or broadcast.
/// Exactly 2 MiB passes.
#[tokio::test]
async fn client_state_over_max_state_bytes_is_refused() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/echo-agent/bomb?_pk=a").await;
    let mut b = server.connect("/agents/echo-agent/bomb?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    let max = agents_server::DEFAULT_MAX_STATE_BYTES;
    // A JSON string state of exactly `len` bytes.
    let state = |len: usize| {
        format!(
            r#"{{"type":"cf_agent_state","state":"{}"}}"#,
            "x".repeat(len - 2)
        )
    };
    a.send(&state(max + 1)).await;
    assert_eq!(
        a.json().await,
        json!({"type":"cf_agent_state_error","error":format!("State update rejected: state is larger than {max} bytes")})
    );
    b.sentinel().await;
    let mut c = server.connect("/agents/echo-agent/bomb?_pk=c").await;
    assert_eq!(c.handshake().await.1, None, "nothing was stored");
    a.send(&state(max)).await;
    let frame = b.json().await;
    assert_eq!(frame["state"].as_str().unwrap().len(), max - 2);
    a.sentinel().await;
}

struct Big;

impl Agent for Big {
    type State = serde_json::Value;

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        let n: usize = message.as_text().unwrap_or("0").parse()?;
        match cx.set_state(json!("y".repeat(n))) {
            Ok(()) => conn.send("stored")?,
            Err(err) => conn.send(err.to_string())?,
        }
        Ok(())
    }
}

/// `set_state` over the limit fails without serializing past it; nothing
/// is stored or sent.
#[tokio::test]
async fn set_state_over_max_state_bytes_fails() {
    let server = TestServer::start(
        AgentServer::new()
            .agent("Big", |_| Big)
            .max_state_bytes(1024),
    )
    .await;
    let mut a = server.connect("/agents/big/s?_pk=a").await;
    let mut b = server.connect("/agents/big/s?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send("5000").await;
    assert_eq!(
        a.text().await,
        "state error: state is larger than 1024 bytes"
    );
    b.sentinel().await;
    a.send("1022").await; // "yyy…" with quotes: exactly 1024 bytes
    assert_eq!(a.json().await["state"].as_str().unwrap().len(), 1022);
    assert_eq!(a.text().await, "stored");
    assert_eq!(b.json().await["state"].as_str().unwrap().len(), 1022);
}

/// Wire compatibility: `{"state":null}` from a client is a state like any
/// other: stored and broadcast to the others (not the sender).
#[tokio::test]
async fn a_null_state_from_a_client_is_stored_and_broadcast() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/echo-agent/null?_pk=a").await;
    let mut b = server.connect("/agents/echo-agent/null?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send(r#"{"type":"cf_agent_state","state":null}"#).await;
    assert_eq!(
        b.json().await,
        json!({"type":"cf_agent_state","state":null})
    );
    a.sentinel().await;
    let mut c = server.connect("/agents/echo-agent/null?_pk=c").await;
    assert_eq!(c.handshake().await.1, Some(json!(null)));
}

// ---- 2. unfinished messages ----

/// A message that stops making progress, or takes too long in all, is
/// closed with 1013 — a partial frame and fragments without FIN alike.
#[tokio::test]
async fn unfinished_messages_have_deadlines() {
    let server = TestServer::start(
        agents_server_cli::demo::server()
            .message_idle_timeout(Duration::from_millis(300))
            .message_timeout(Duration::from_millis(900)),
    )
    .await;
    // One big frame short of its end.
    let mut stalled = Raw::connect(server.addr, "/agents/echo-agent/slow", &[]).await;
    stalled.write(&Raw::header(true, 2, 1 << 20)).await;
    stalled.write(&Raw::masked(0, 0, 1000)).await;
    assert_eq!(
        stalled.close_frame().await,
        (1013, "Message took too long".into())
    );
    // Fragments that keep coming but never end.
    let mut trickle = Raw::connect(server.addr, "/agents/echo-agent/slow", &[]).await;
    trickle.write(&Raw::frame(false, 1, b"part")).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if trickle
                .tcp
                .write_all(&Raw::frame(false, 0, b"more"))
                .await
                .is_err()
            {
                break None;
            }
            let mut peek = [0u8; 1];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), trickle.tcp.peek(&mut peek)).await
            {
                if n > 0 {
                    break Some(trickle.close_frame().await);
                }
            }
        }
    })
    .await
    .expect("the trickling message was never closed");
    assert_eq!(closed, Some((1013, "Message took too long".into())));
}

/// The bytes held by unfinished messages are capped server-wide: the socket
/// that would pass the budget is closed with 1013; the others go on.
#[tokio::test]
async fn unfinished_bytes_are_capped_server_wide() {
    let server = TestServer::start(
        agents_server_cli::demo::server()
            .max_message_size(512 * 1024)
            .max_unfinished_bytes(1024 * 1024),
    )
    .await;
    let mut a = Raw::connect(server.addr, "/agents/echo-agent/cap?_pk=a", &[]).await;
    let len = 500 * 1024;
    a.write(&Raw::header(true, 2, len)).await;
    a.write(&Raw::masked(7, 0, 400 * 1024)).await;
    let mut b = Raw::connect(server.addr, "/agents/echo-agent/cap?_pk=b", &[]).await;
    b.write(&Raw::header(true, 2, len)).await;
    b.write(&Raw::masked(7, 0, 300 * 1024)).await;
    // Sequencing only (the server reads at once): a and b hold 700 KiB
    // before c's 400 KiB would pass the 1 MiB budget.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Raw::connect(server.addr, "/agents/echo-agent/cap?_pk=c", &[]).await;
    c.write(&Raw::header(true, 2, len)).await;
    let _ = c.tcp.write_all(&Raw::masked(7, 0, 400 * 1024)).await;
    assert_eq!(c.close_frame().await, (1013, "Server busy".into()));
    // a finishes its message and gets it back.
    a.write(&Raw::masked(7, 400 * 1024, len - 400 * 1024)).await;
    let echoed = loop {
        match a.next_frame().await {
            Some((2, payload)) => break payload,
            Some(_) => continue,
            None => panic!("a was closed"),
        }
    };
    assert_eq!(echoed.len(), len);
    assert!(echoed.iter().all(|&b| b == 7));
}

/// Wire compatibility: a message over the limit reaches the client as
/// close 1009 even while it is still writing it (the server reads the rest
/// and drops it instead of resetting the connection).
#[tokio::test]
async fn an_oversized_message_is_answered_with_1009_not_a_reset() {
    let server =
        TestServer::start(agents_server_cli::demo::server().max_message_size(64 * 1024)).await;
    let mut c = server.connect("/agents/echo-agent/huge").await;
    c.handshake().await;
    c.ws.send(Ws::binary(vec![1u8; 16 << 20]))
        .await
        .expect("the whole message could be written");
    assert_eq!(
        c.closed().await,
        (
            1009,
            format!("Message is too large: {} > {}", 16 << 20, 64 * 1024)
        )
    );
}

// ---- 3 and 4. slow consumers ----

/// One client stops reading, another floods broadcasts, a third reads as
/// fast as it can: the reader gets every frame in order; the staller is
/// closed for making no progress; the flooder is slowed, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_loses_nothing_while_another_stalls() {
    const N: usize = 20_000;
    let server = TestServer::start(
        agents_server_cli::demo::server()
            .outbound_queue_bytes(64 * 1024)
            .slow_consumer_timeout(Duration::from_millis(500)),
    )
    .await;
    let path = "/agents/counter-agent/flood";
    let (status, mut paused) = Raw::try_connect(server.addr, path, &[], Some(4096)).await;
    assert_eq!(status, 101);
    let mut reader = server.connect(path).await;
    reader.handshake().await;
    let mut flooder = server.connect(path).await;
    flooder.handshake().await;
    // The flooder reads what it gets, as a browser would.
    let (mut flood, mut echoes) = flooder.ws.split();
    let drain = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match echoes.next().await {
                Some(Ok(Ws::Text(_))) => n += 1,
                Some(Ok(_)) => {}
                other => panic!("the flooder's socket ended: {other:?}"),
            }
        }
        echoes
    });
    let filler = "f".repeat(1000);
    let send = tokio::spawn(async move {
        for i in 0..N {
            flood
                .feed(Ws::text(format!("broadcast:{i:05}{filler}")))
                .await
                .unwrap();
        }
        flood.flush().await.unwrap();
        flood
    });
    for i in 0..N {
        let text = reader.text().await;
        assert_eq!(&text[..5], format!("{i:05}"), "frame {i} out of order");
    }
    let flood = send.await.unwrap();
    let echoes = drain.await.unwrap();
    let mut flooder = Client {
        ws: flood.reunite(echoes).unwrap(),
    };
    flooder.sentinel().await;
    // The staller was dropped: draining it ends in a hang-up.
    paused.until_hangup().await;
}

/// Messages that arrive in one read are handed to the instance together,
/// but a client that falls behind its queue budget still holds the rest
/// back, message by message: 32 broadcasts in one write, 12 KiB to a
/// reader whose budget is 1 KiB (dropped at 4 KiB queued), reach it all.
#[tokio::test]
async fn a_slow_reader_holds_back_the_rest_of_a_read() {
    let server =
        TestServer::start(agents_server_cli::demo::server().outbound_queue_bytes(1024)).await;
    let path = "/agents/counter-agent/one-read";
    let (status, mut slow) = Raw::try_connect(server.addr, path, &[], Some(4096)).await;
    assert_eq!(status, 101);
    let mut flooder = Raw::connect(server.addr, path, &[]).await;
    let mut bytes = Vec::new();
    let filler = "f".repeat(380);
    for i in 0..32 {
        bytes.extend(Raw::frame(
            true,
            1,
            format!("broadcast:{i:02}{filler}").as_bytes(),
        ));
    }
    flooder.write(&bytes).await;
    let want: Vec<String> = (0..32).map(|i| format!("{i:02}")).collect();
    assert_eq!(broadcasts(&mut flooder, filler.len()).await, want);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broadcasts(&mut slow, filler.len()).await, want);
}

/// The two-digit numbers of the first 32 broadcasts of `filler_len` filler
/// `raw` gets; panics if it is dropped first.
async fn broadcasts(raw: &mut Raw, filler_len: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < 32 {
        match raw.next_frame().await {
            Some((1, text)) if text.len() == 2 + filler_len => {
                got.push(String::from_utf8(text[..2].to_vec()).unwrap());
            }
            Some(_) => {}
            None => panic!("dropped after {} broadcasts", got.len()),
        }
    }
    got
}

/// A message and a close in one read, to an instance whose inbox is full:
/// the socket waits for room before it hangs up, so the agent sees the
/// message, then the close.
#[tokio::test]
async fn a_message_read_with_the_close_reaches_a_busy_instance() {
    let log = Log::default();
    let server = TestServer::start(server_with_probe(&log).inbox_capacity(1)).await;
    let path = "/agents/probe-agent/closing";
    let mut raw = Raw::connect(server.addr, &format!("{path}?_pk=raw"), &[]).await;
    // Registered once its first frame (the identity) is out.
    assert!(raw.next_frame().await.is_some());
    let mut busy = server.connect(&format!("{path}?_pk=busy")).await;
    busy.handshake().await;
    busy.send("sleep:400").await;
    // Taken by the instance (asleep), then one more fills the inbox.
    while !log_lines(&log).iter().any(|l| l == "message sleep:400") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    busy.send("filler").await;
    // (Time for "filler" to reach the inbox first; checked below.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut bytes = Raw::frame(true, 1, b"bye");
    bytes.extend(Raw::frame(true, 8, &1000u16.to_be_bytes()));
    raw.write(&bytes).await;
    assert_eq!(raw.close_frame().await, (1000, String::new()));
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = log_lines(&log)
            .into_iter()
            .filter(|l| l == "message filler" || l == "message bye" || l.starts_with("close raw"))
            .collect();
        if seen.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ("filler" first: "bye" did wait for room.)
    assert_eq!(
        seen,
        ["message filler", "message bye", "close raw 1000 \"\" true"]
    );
}

/// An instance whose inbox is full stops its sockets from reading: a client
/// pipelining into a busy instance is held back by TCP, and everything it
/// sent is handled in order once the instance is free again.
#[tokio::test]
async fn a_full_inbox_holds_senders_back() {
    let log = Log::default();
    let server = TestServer::start(server_with_probe(&log).inbox_bytes(64 * 1024)).await;
    let mut c = server.connect("/agents/probe-agent/busy?_pk=busy").await;
    c.handshake().await;
    c.send("sleep:300").await;
    let chunk = "z".repeat(16 * 1024);
    for i in 0..64 {
        c.send(&format!("{i:02}{chunk}")).await;
    }
    c.send("count").await;
    assert_eq!(c.text().await, "1");
    let seen: Vec<String> = log_lines(&log)
        .into_iter()
        .filter_map(|l| {
            l.strip_prefix("message ")
                .map(|m| m.chars().take(2).collect())
        })
        .filter(|m: &String| m.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    let want: Vec<String> = (0..64).map(|i| format!("{i:02}")).collect();
    assert_eq!(seen, want);
}

// ---- 5. live instances ----

/// At `max_instances`, the longest-idle instance makes room; when none is
/// idle, a new one is refused (close 1013, HTTP 503).
#[tokio::test]
async fn instances_are_capped() {
    let server = TestServer::start(agents_server_cli::demo::server().max_instances(3)).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = server.connect(&format!("/agents/counter-agent/n{i}")).await;
        c.handshake().await;
        held.push(c);
    }
    let mut refused = server.connect("/agents/counter-agent/n3").await;
    assert_eq!(refused.closed().await, (1013, "Too many instances".into()));
    assert_eq!(
        server.get("/agents/counter-agent/n4").await,
        (503, "Too many instances".into())
    );
    // One goes idle: the next new instance takes its place.
    let mut first = held.remove(0);
    first.close(1000, "").await;
    first.closed().await;
    let mut c = tokio::time::timeout(WAIT, async {
        loop {
            let mut c = server.connect("/agents/counter-agent/n3").await;
            match c.next().await {
                Ws::Text(t) if t.as_str().contains("cf_agent_identity") => break c,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("no room was made");
    assert_eq!(c.json().await["type"], "cf_agent_state");
    assert_eq!(c.text().await, MCP_FRAME);
    c.sentinel().await;
    assert_eq!(server.agents.instance_count(), 3);
}

/// Plain HTTP to an agent type without `on_request` costs no instances.
#[tokio::test]
async fn plain_http_to_agents_without_on_request_starts_no_instances() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    for i in 0..200 {
        assert_eq!(
            server.get(&format!("/agents/echo-agent/g{i}")).await,
            (404, "Not implemented".into())
        );
    }
    assert!(server.agents.instance_count() <= 1);
}

// ---- 6 and 7. request heads, shutdown ----

/// Only the path and query stay with a connection, not its headers; a
/// request head over the limit is refused with 431.
#[tokio::test]
async fn request_heads_are_bounded_and_not_kept() {
    let (server, _log) = start_with_probe().await;
    let big = "h".repeat(40 * 1024);
    let mut raw = Raw::connect(
        server.addr,
        "/agents/probe-agent/u?_pk=x",
        &[("x-big", &big)],
    )
    .await;
    raw.write(&Raw::frame(true, 1, b"uri?")).await;
    let uri = loop {
        match raw.next_frame().await {
            Some((1, p)) if !p.starts_with(b"{") => break String::from_utf8(p).unwrap(),
            Some(_) => continue,
            None => panic!("closed"),
        }
    };
    assert_eq!(uri, "/agents/probe-agent/u?_pk=x");
    let huge = "h".repeat(100 * 1024);
    let (status, _) = Raw::try_connect(
        server.addr,
        "/agents/probe-agent/u",
        &[("x-huge", &huge)],
        None,
    )
    .await;
    assert_eq!(status, 431);
}

/// A request head that never completes is dropped after the header-read
/// timeout, and does not hold up shutdown.
#[tokio::test]
async fn half_sent_heads_time_out_and_do_not_hold_up_shutdown() {
    let server = TestServer::start(
        agents_server_cli::demo::server().header_read_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, half.read_to_end(&mut rest))
        .await
        .expect("the half-sent head was not dropped")
        .ok();
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /agents/echo-agent/x HTTP/1.1\r\nHo")
            .await
            .unwrap();
        others.push(s);
    }
    server.shutdown().await;
}

struct Flood;

impl Agent for Flood {
    type State = ();

    async fn on_message(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        _message: Message,
    ) -> Result<(), BoxError> {
        for _ in 0..64 {
            conn.send(vec![0u8; 64 * 1024])?;
        }
        Ok(())
    }
}

/// A client that stops reading cannot keep the server alive after it was
/// asked to stop: shutdown returns within its deadline.
#[tokio::test]
async fn a_client_that_never_reads_does_not_hold_up_shutdown() {
    let server = TestServer::start(
        AgentServer::new()
            .agent("Flood", |_| Flood)
            .slow_consumer_timeout(Duration::from_secs(60))
            .shutdown_timeout(Duration::from_millis(500)),
    )
    .await;
    let (_, mut c) = Raw::try_connect(server.addr, "/agents/flood/x", &[], Some(4096)).await;
    c.write(&Raw::frame(true, 1, b"go")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown().await;
}

// ---- 10. auth, origins, pings, panics ----

/// `on_before_connect` guards plain HTTP to an instance too.
#[tokio::test]
async fn the_connect_hook_guards_plain_http() {
    let server = TestServer::start(agents_server_cli::demo::server().on_before_connect(
        |req, _route| async move {
            if req.query("token") == Some("ok") {
                Ok(req)
            } else {
                Err((http::StatusCode::UNAUTHORIZED, "no token").into_response_for_test())
            }
        },
    ))
    .await;
    assert_eq!(
        server.get("/agents/counter-agent/a").await,
        (401, "no token".into())
    );
    assert_eq!(
        server.get("/agents/counter-agent/a?token=ok").await,
        (200, r#"{"count":0}"#.into())
    );
}

/// `on_before_request` is the hook for plain HTTP when given.
#[tokio::test]
async fn the_request_hook_sees_plain_http() {
    let server = TestServer::start(agents_server_cli::demo::server().on_before_request(
        |req: http::Request<axum::body::Body>, route| async move {
            if req.headers().contains_key("x-ok") {
                Ok(req)
            } else {
                Err(
                    (http::StatusCode::FORBIDDEN, format!("not {}", route.agent))
                        .into_response_for_test(),
                )
            }
        },
    ))
    .await;
    assert_eq!(
        server.get("/agents/counter-agent/a").await,
        (403, "not counter-agent".into())
    );
    assert_eq!(
        http_get(server.addr, "/agents/counter-agent/a", &[("x-ok", "1")]).await,
        (200, r#"{"count":0}"#.into())
    );
}

/// Upgrades from origins outside `allowed_origins` get 403; requests from
/// no browser (no `Origin`) and from allowed origins pass.
#[tokio::test]
async fn allowed_origins_refuse_other_pages() {
    let server = TestServer::start(
        agents_server_cli::demo::server().allowed_origins(["https://app.example"]),
    )
    .await;
    let path = "/agents/echo-agent/o";
    let (status, _) = Raw::try_connect(
        server.addr,
        path,
        &[("origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = Raw::try_connect(
        server.addr,
        path,
        &[("origin", "https://APP.example")],
        None,
    )
    .await;
    assert_eq!(status, 101);
    let (status, _) = Raw::try_connect(server.addr, path, &[], None).await;
    assert_eq!(status, 101);
}

/// CORS: preflights answered by the server, headers on plain responses.
#[tokio::test]
async fn cors_for_plain_http() {
    let server = TestServer::start(
        agents_server_cli::demo::server().cors(Cors::origins(["http://page.example"])),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"OPTIONS /agents/counter-agent/c HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\n\
          Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).await.unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://page.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-methods: get, post, head, options"),
        "{head}"
    );
    assert_eq!(
        server.agents.instance_count(),
        0,
        "a preflight starts no instance"
    );
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /agents/counter-agent/c HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: http://page.example"));
    assert!(response.ends_with(r#"{"count":0}"#), "{response}");
}

/// Sockets silent for two ping intervals are closed (half-open sockets do
/// not live forever); a client that answers pings stays.
#[tokio::test]
async fn silent_sockets_are_closed_after_two_ping_intervals() {
    let log = Log::default();
    let server =
        TestServer::start(server_with_probe(&log).ping_interval(Duration::from_millis(200))).await;
    // A client that reads all along, as browsers do, answers every ping.
    let mut live = server.connect("/agents/probe-agent/p?_pk=live").await;
    live.handshake().await;
    let reading = tokio::spawn(async move { while let Some(Ok(_)) = live.ws.next().await {} });
    let mut silent = Raw::connect(server.addr, "/agents/probe-agent/p?_pk=silent", &[]).await;
    let mut pinged = false;
    while let Some((opcode, _)) = silent.next_frame().await {
        pinged |= opcode == 0x9;
    }
    assert!(pinged, "the server pinged before giving up");
    assert_eq!(
        wait_for(&log, "close silent").await,
        r#"close silent 1006 "" false"#
    );
    // Two intervals passed for the reading client too, and it is still here.
    let mut check = server.connect("/agents/probe-agent/p?_pk=check").await;
    check.handshake().await;
    check.send("count").await;
    assert_eq!(check.text().await, "2");
    assert!(!reading.is_finished());
}

struct SyncPanic;

impl Agent for SyncPanic {
    type State = ();

    #[allow(clippy::manual_async_fn)]
    fn on_message(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send {
        if message.as_text() == Some("boom") {
            panic!("before any await");
        }
        let result = conn.send(message).map_err(Into::into);
        async move { result }
    }
}

/// A panic in the synchronous part of a hand-written `fn … -> impl Future`
/// hook is caught like any other: the instance and the socket stay.
#[tokio::test]
async fn a_panic_before_the_future_is_caught() {
    let server = TestServer::start(AgentServer::new().agent("SyncPanic", |_| SyncPanic)).await;
    let mut c = server.connect("/agents/sync-panic/x").await;
    c.handshake().await;
    c.send("boom").await;
    c.send("still here").await;
    assert_eq!(c.text().await, "still here");
}

/// Test helper: `IntoResponse` without naming axum's trait at each use.
trait IntoResponseForTest {
    fn into_response_for_test(self) -> axum::response::Response;
}

impl<T: axum::response::IntoResponse> IntoResponseForTest for T {
    fn into_response_for_test(self) -> axum::response::Response {
        self.into_response()
    }
}
