//! Failing and panicking hooks: only what they touched is affected.

use crate::util::*;

#[tokio::test]
async fn failing_on_connect_sends_error_then_1011() {
    let (server, log) = start_with_probe().await;
    for (query, text) in [
        ("fail=1", "connect refused"),
        ("fail=panic", "connect exploded"),
    ] {
        let mut c = server
            .connect(&format!("/agents/probe-agent/oc?_pk=x&{query}"))
            .await;
        c.handshake().await;
        assert_eq!(c.json().await, serde_json::json!({ "error": text }));
        assert_eq!(
            c.closed().await,
            (1011, "Uncaught exception during session setup".into())
        );
    }
    assert!(log_lines(&log)
        .iter()
        .any(|l| l.starts_with("error x on_connect panicked")));
    // No on_close for a connection that never completed setup.
    assert!(!log_lines(&log).iter().any(|l| l.starts_with("close ")));
    // The instance is fine.
    let mut c = server.connect("/agents/probe-agent/oc?_pk=ok").await;
    c.handshake().await;
    c.send("count").await;
    assert_eq!(c.text().await, "1");
}

#[tokio::test]
async fn failing_on_message_goes_to_on_error_and_the_connection_stays() {
    let (server, log) = start_with_probe().await;
    let mut c = server.connect("/agents/probe-agent/om?_pk=m").await;
    let mut other = server.connect("/agents/probe-agent/other").await;
    c.handshake().await;
    other.handshake().await;
    c.send("fail").await;
    c.send("panic").await;
    c.send("count").await;
    assert_eq!(c.text().await, "1");
    assert_eq!(
        wait_for(&log, "error m on_message failed").await,
        "error m on_message failed: message refused"
    );
    assert_eq!(
        wait_for(&log, "error m on_message panicked").await,
        "error m on_message panicked: message exploded"
    );
    // Another instance was not affected, nor this one.
    other.send("count").await;
    assert_eq!(other.text().await, "1");
    c.send("count").await;
    assert_eq!(c.text().await, "1");
}
