//! Hostile input: malformed frames, odd sizes, fragments, vanishing clients.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::util::*;

/// Everything that is not a well-formed protocol frame reaches `on_message`
/// unchanged and in order (edge cases §2).
#[tokio::test]
async fn malformed_and_unknown_frames_reach_on_message() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/bad").await;
    c.handshake().await;
    let frames = [
        "{bad json",
        r#"{"type":"rpc","id":"r2","method":"increment"}"#,
        r#"{"type":"rpc","method":"increment","args":[1]}"#,
        r#"{"type":"rpc","id":7,"method":"increment","args":[1]}"#,
        r#"{"type":"cf_agent_state"}"#,
        r#"{"type":"cf_agent_unknown","x":1}"#,
        r#"{"type":"cf_agent_identity","name":"spoof","agent":"x"}"#,
        "[1,2,3]",
        "null",
        "\u{0}\u{1}",
        "😀 unicode",
    ];
    for f in frames {
        c.send(f).await;
    }
    c.send_binary(&[1, 2, 3]).await;
    c.send("done").await;
    wait_for(&log, "message done").await;
    let seen: Vec<String> = log_lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("message ") || l.starts_with("binary "))
        .collect();
    let mut want: Vec<String> = frames.iter().map(|f| format!("message {f}")).collect();
    want.push("binary 3".into());
    want.push("message done".into());
    assert_eq!(seen, want);
}

/// Empty, fragmented and 1 MiB messages round-trip intact and in order.
#[tokio::test]
async fn sizes_and_fragments_round_trip() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut c = server.connect("/agents/echo-agent/sizes").await;
    c.handshake().await;
    c.send("").await;
    c.send_binary(&[]).await;
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.send_binary(&big).await;
    let big_text = "x".repeat(1024 * 1024 + 1);
    c.send(&big_text).await;
    // A text message in three fragments.
    for (part, opcode, fin) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ] {
        c.ws.send(Ws::Frame(Frame::message(Bytes::from(part), opcode, fin)))
            .await
            .unwrap();
    }
    c.send("last").await;
    assert_eq!(c.text().await, "");
    assert_eq!(c.binary().await, Vec::<u8>::new());
    assert_eq!(c.binary().await, big);
    assert_eq!(c.text().await, big_text);
    assert_eq!(c.text().await, "fragmented");
    assert_eq!(c.text().await, "last");
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let log = Log::default();
    let server = TestServer::start(server_with_probe(&log).max_message_size(64 * 1024)).await;
    let mut c = server.connect("/agents/probe-agent/huge?_pk=h").await;
    c.handshake().await;
    c.send_binary(&vec![0u8; 64 * 1024]).await;
    c.send_binary(&vec![0u8; 64 * 1024 + 1]).await;
    assert_eq!(
        c.closed().await,
        (1009, "Message is too large: 65537 > 65536".into())
    );
    let close = wait_for(&log, "close h").await;
    assert!(close.starts_with("close h 1009"), "{close}");
    assert!(log_lines(&log).contains(&"binary 65536".to_owned()));
}

/// Invalid UTF-8 in a text frame ends that connection only.
#[tokio::test]
async fn invalid_utf8_ends_only_that_connection() {
    let (server, log) = start_with_probe().await;
    let mut good = server.connect("/agents/probe-agent/utf?_pk=good").await;
    let mut bad = server.connect("/agents/probe-agent/utf?_pk=bad").await;
    good.handshake().await;
    bad.handshake().await;
    let frame = Frame::message(
        Bytes::from_static(&[0xff, 0xfe]),
        OpCode::Data(Data::Text),
        true,
    );
    bad.ws.send(Ws::Frame(frame)).await.unwrap();
    assert_eq!(bad.closed().await.0, 1007);
    assert!(wait_for(&log, "close bad")
        .await
        .starts_with("close bad 1007"));
    good.send("count").await;
    assert_eq!(good.text().await, "1");
}

/// A client that vanishes without a close frame is reported as 1006, unclean.
#[tokio::test]
async fn vanished_client_is_an_abnormal_close() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/gone?_pk=ghost").await;
    c.handshake().await;
    drop(c);
    assert_eq!(
        wait_for(&log, "close ghost").await,
        r#"close ghost 1006 "" false"#
    );
}

/// Garbage instead of a WebSocket frame ends only that connection.
#[tokio::test]
async fn garbage_bytes_end_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let (server, log) = start_with_probe().await;
    let mut good = server.connect("/agents/probe-agent/g?_pk=good").await;
    good.handshake().await;
    let c = server.connect("/agents/probe-agent/g?_pk=junk").await;
    let mut tcp = match c.ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    // All reserved bits set: a protocol violation.
    tcp.write_all(&[0xff; 64]).await.unwrap();
    let close = wait_for(&log, "close junk").await;
    assert!(
        close.starts_with("close junk 1002 \"Protocol error"),
        "{close}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    good.send("count").await;
    assert_eq!(good.text().await, "1");
}
