//! Frames byte for byte as the reference sends them (`reference-wire.log`).

use crate::util::*;

/// `#1` of the capture: echo-agent connect frames, echo, not-a-protocol, rpc nope.
#[tokio::test]
async fn echo_agent_matches_the_reference_capture() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server
        .connect("/agents/echo-agent/a?_pk=5bbad2fc-c20b-4b57-988a-dfe7f849475f")
        .await;
    assert_eq!(
        c.text().await,
        r#"{"type":"cf_agent_identity","name":"a","agent":"echo-agent"}"#
    );
    assert_eq!(c.text().await, MCP_FRAME);
    c.send("hello echo").await;
    assert_eq!(c.text().await, "hello echo");
    c.send_binary(&[0, 1, 2, 3, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff])
        .await;
    assert_eq!(
        c.binary().await,
        [0, 1, 2, 3, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff]
    );
    c.send(r#"{"type":"not_a_protocol","x":1}"#).await;
    assert_eq!(c.text().await, r#"{"type":"not_a_protocol","x":1}"#);
    c.send(
        r#"{"args":[1],"id":"7710c910-b60b-42c5-8fe6-66b8b7325202","method":"nope","type":"rpc"}"#,
    )
    .await;
    assert_eq!(
        c.text().await,
        r#"{"error":"Method nope does not exist","id":"7710c910-b60b-42c5-8fe6-66b8b7325202","success":false,"type":"rpc"}"#
    );
    c.close(1000, "").await;
    assert_eq!(c.closed().await, (1000, String::new()));
}

/// `#2` of the capture: counter-agent connect frames, non-callable hook, broadcast.
#[tokio::test]
async fn counter_agent_matches_the_reference_capture() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/counter-agent/c?_pk=ed923615").await;
    assert_eq!(
        c.text().await,
        r#"{"type":"cf_agent_identity","name":"c","agent":"counter-agent","stateFollows":true}"#
    );
    assert_eq!(
        c.text().await,
        r#"{"type":"cf_agent_state","state":{"count":0}}"#
    );
    assert_eq!(c.text().await, MCP_FRAME);
    c.send(r#"{"args":[],"id":"0456","method":"onMessage","type":"rpc"}"#)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"error":"Method onMessage is not callable","id":"0456","success":false,"type":"rpc"}"#
    );
    c.send("broadcast:hello-all").await;
    assert_eq!(c.text().await, "hello-all");
}

/// Edge case 1: a broadcast reaches every connection of the instance.
#[tokio::test]
async fn broadcast_reaches_every_connection() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/counter-agent/room?_pk=a").await;
    let mut b = server.connect("/agents/counter-agent/room?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    b.send("broadcast:to-everyone").await;
    assert_eq!(a.text().await, "to-everyone");
    assert_eq!(b.text().await, "to-everyone");
}

/// The chat example broadcasts each text message to everyone, sender included.
#[tokio::test]
async fn chat_agent_broadcasts_text() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/chat-agent/lobby").await;
    let mut b = server.connect("/agents/chat-agent/lobby").await;
    a.handshake().await;
    b.handshake().await;
    a.send("hi all").await;
    assert_eq!(a.text().await, "hi all");
    assert_eq!(b.text().await, "hi all");
}

/// The private example agent closes unauthorized sockets with terminal 4001.
#[tokio::test]
async fn private_agent_needs_its_token() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/private-agent/p").await;
    c.handshake().await;
    assert_eq!(c.closed().await, (4001, "Unauthorized".into()));
    let mut ok = server
        .connect("/agents/private-agent/p?token=let-me-in")
        .await;
    ok.handshake().await;
    ok.send("hi").await;
    assert_eq!(ok.text().await, "hi");
}
