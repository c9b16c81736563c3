//! RPC: replies exactly as the reference, errors as data, streaming.

use serde_json::json;

use crate::util::*;

fn call(id: &str, method: &str, args: serde_json::Value) -> String {
    json!({"type":"rpc","id":id,"method":method,"args":args}).to_string()
}

/// Edge case 1 of the reference: the state broadcast reaches everyone before
/// the caller gets its reply.
#[tokio::test]
async fn increment_broadcasts_state_before_the_reply() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/counter-agent/rpc?_pk=a").await;
    let mut b = server.connect("/agents/counter-agent/rpc?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send(&call("r1", "increment", json!([5]))).await;
    assert_eq!(
        b.text().await,
        r#"{"type":"cf_agent_state","state":{"count":5}}"#
    );
    assert_eq!(
        a.text().await,
        r#"{"type":"cf_agent_state","state":{"count":5}}"#
    );
    assert_eq!(
        a.text().await,
        r#"{"done":true,"id":"r1","result":5,"success":true,"type":"rpc"}"#
    );
}

#[tokio::test]
async fn errors_are_replies_and_the_connection_stays() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/rpc-errors").await;
    c.handshake().await;
    c.send(&call("1", "nope", json!([]))).await;
    assert_eq!(
        c.json().await,
        json!({"type":"rpc","id":"1","success":false,"error":"Method nope does not exist"})
    );
    c.send(&call("2", "add", json!(["x", 1]))).await;
    let reply = c.json().await;
    assert_eq!(reply["success"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid arguments for add: invalid type"),
        "{reply}"
    );
    c.send(&call("3", "add", json!([1]))).await;
    assert!(c.json().await["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid arguments for add"));
    c.send(&call("4", "boom", json!([]))).await;
    assert_eq!(
        c.json().await,
        json!({"type":"rpc","id":"4","success":false,"error":"rpc exploded"})
    );
    c.send(&call("5", "fail", json!([]))).await;
    assert_eq!(
        c.json().await,
        json!({"type":"rpc","id":"5","success":false,"error":"it failed"})
    );
    c.send(&call("6", "onConnect", json!([]))).await;
    assert_eq!(c.json().await["error"], "Method onConnect is not callable");
    // Still up, and nothing reached on_message.
    c.send(&call("7", "add", json!([1.5, 2]))).await;
    assert_eq!(
        c.text().await,
        r#"{"done":true,"id":"7","result":3.5,"success":true,"type":"rpc"}"#
    );
    c.send(&call("8", "nothing", json!([]))).await;
    assert_eq!(
        c.text().await,
        r#"{"done":true,"id":"8","success":true,"type":"rpc"}"#
    );
    assert!(!log_lines(&log).iter().any(|l| l.starts_with("message")));
}

#[tokio::test]
async fn pipelined_calls_are_each_answered_by_id() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/counter-agent/pipe").await;
    c.handshake().await;
    for i in 1..=3 {
        c.send(&call(&format!("p{i}"), "increment", json!([i])))
            .await;
    }
    let mut results = Vec::new();
    while results.len() < 3 {
        let frame = c.json().await;
        if frame["type"] == "rpc" {
            results.push((
                frame["id"].as_str().unwrap().to_owned(),
                frame["result"].clone(),
            ));
        }
    }
    assert_eq!(
        results,
        [
            ("p1".into(), json!(1)),
            ("p2".into(), json!(3)),
            ("p3".into(), json!(6))
        ]
    );
}

/// Frames that arrive in one read reach the agent in order, each its own
/// turn (its state before its reply, as when sent alone), across the
/// batches a read is handed over in; the pings among them are answered
/// (an unsent pong gives way to the next ping's, as RFC 6455 allows).
#[tokio::test]
async fn frames_of_one_read_are_each_their_own_turn() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = Raw::connect(server.addr, "/agents/counter-agent/one-read", &[]).await;
    let calls = 100;
    let mut bytes = Vec::new();
    for i in 1..=calls {
        let frame = call(&i.to_string(), "increment", json!([1]));
        bytes.extend(Raw::frame(true, 1, frame.as_bytes()));
        if i % 30 == 0 {
            bytes.extend(Raw::frame(true, 9, format!("ping{i}").as_bytes()));
        }
    }
    c.write(&bytes).await;
    let (mut turns, mut pongs) = (Vec::new(), Vec::new());
    while turns.len() < 1 + 2 * calls || pongs.last().is_none_or(|p| p != "ping90") {
        match c.next_frame().await.expect("hung up") {
            (1, text) => {
                let frame: serde_json::Value = serde_json::from_slice(&text).unwrap();
                match frame["type"].as_str() {
                    Some("cf_agent_state") => {
                        turns.push(format!("state {}", frame["state"]["count"]))
                    }
                    Some("rpc") => turns.push(format!(
                        "reply {} {}",
                        frame["id"].as_str().unwrap(),
                        frame["result"]
                    )),
                    _ => {}
                }
            }
            (0xA, payload) => pongs.push(String::from_utf8(payload).unwrap()),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The connect frames' state first (count 0), then per call its state and its reply.
    let want: Vec<String> = std::iter::once("state 0".to_owned())
        .chain((1..=calls).flat_map(|i| [format!("state {i}"), format!("reply {i} {i}")]))
        .collect();
    assert_eq!(turns, want);
    assert!(
        ["ping30", "ping60"]
            .iter()
            .all(|p| pongs.iter().filter(|&q| q == p).count() <= 1),
        "{pongs:?}"
    );
}

#[tokio::test]
async fn streaming_sends_chunks_in_order_then_done() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/counter-agent/stream").await;
    c.handshake().await;
    c.send(&call("s", "count_to", json!([4]))).await;
    for i in 1..4 {
        assert_eq!(
            c.json().await,
            json!({"type":"rpc","id":"s","success":true,"done":false,"result":i})
        );
    }
    assert_eq!(
        c.json().await,
        json!({"type":"rpc","id":"s","success":true,"done":true,"result":4})
    );
    c.send(&call("t", "count_to", json!([1_000_000]))).await;
    assert_eq!(c.json().await["error"], "n must be at most 1000");
}

#[tokio::test]
async fn validation_rejects_a_client_state() {
    let (server, log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/validate?_pk=a").await;
    let mut b = server.connect("/agents/probe-agent/validate?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send(r#"{"type":"cf_agent_state","state":{"forbidden":true}}"#)
        .await;
    assert_eq!(
        a.json().await,
        json!({"type":"cf_agent_state_error","error":"State update rejected"})
    );
    b.sentinel().await;
    a.send(r#"{"type":"cf_agent_state","state":{"ok":1}}"#)
        .await;
    assert_eq!(
        b.json().await,
        json!({"type":"cf_agent_state","state":{"ok":1}})
    );
    assert_eq!(wait_for(&log, "state a").await, r#"state a {"ok":1}"#);
}

#[tokio::test]
async fn instance_key_value_storage() {
    let (server, _log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/kv-one").await;
    a.handshake().await;
    a.send("remember:blue").await;
    a.send("recall").await;
    assert_eq!(a.text().await, "blue");
    let mut b = server.connect("/agents/probe-agent/kv-two").await;
    b.handshake().await;
    b.send("recall").await;
    assert_eq!(b.text().await, "nothing");
}

#[tokio::test]
async fn chat_keeps_history_for_newcomers() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/chat-agent/history?_pk=ann").await;
    a.handshake().await;
    a.send("first").await;
    a.send("second").await;
    // The sender gets each message back, then the state that holds it; once
    // the second state frame is here, both messages are stored.
    assert_eq!(a.text().await, "first");
    assert_eq!(a.json().await["type"], "cf_agent_state");
    assert_eq!(a.text().await, "second");
    assert_eq!(a.json().await["state"]["messages"][1]["text"], "second");
    let mut c = server.connect("/agents/chat-agent/history?_pk=cat").await;
    let state = c.handshake().await.1.unwrap();
    let texts: Vec<_> = state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("first"), json!("second")]);
    assert_eq!(state["messages"][0]["from"], "ann");
    // Clients cannot rewrite it.
    c.send(r#"{"type":"cf_agent_state","state":{"messages":[]}}"#)
        .await;
    assert_eq!(c.json().await["type"], "cf_agent_state_error");
}
