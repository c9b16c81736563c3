//! Limits: connections per instance, slow readers, fan-out at scale.

use std::time::Duration;

use crate::util::*;

#[tokio::test]
async fn connections_beyond_the_limit_get_1013() {
    let server =
        TestServer::start(agents_server_cli::demo::server().max_connections_per_instance(2)).await;
    let mut a = server.connect("/agents/echo-agent/full").await;
    let mut b = server.connect("/agents/echo-agent/full").await;
    a.handshake().await;
    b.handshake().await;
    let mut c = server.connect("/agents/echo-agent/full").await;
    assert_eq!(c.closed().await, (1013, "Too many connections".into()));
    // Other instances are not limited by this one.
    let mut d = server.connect("/agents/echo-agent/other").await;
    d.handshake().await;
}

/// A client that stops reading is dropped instead of buffered forever, and
/// the instance keeps serving the others.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let log = Log::default();
    let server = TestServer::start(
        server_with_probe(&log)
            .outbound_queue(16)
            .outbound_queue_bytes(64 * 1024),
    )
    .await;
    let mut slow = server.connect("/agents/probe-agent/slow?_pk=slow").await;
    let mut fine = server.connect("/agents/probe-agent/slow?_pk=fine").await;
    slow.handshake().await;
    fine.handshake().await;
    // 64 MiB that the slow client never reads.
    slow.send("flood:65536").await;
    wait_for(&log, "flood dropped").await;
    assert_eq!(
        wait_for(&log, "close slow").await,
        r#"close slow 1006 "" false"#
    );
    fine.send("count").await;
    assert_eq!(fine.text().await, "1");
}

/// 1000 connections on one instance; one broadcast reaches all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_a_thousand_connections() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut clients = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut c = server
            .connect(&format!("/agents/counter-agent/crowd?_pk=c{i}"))
            .await;
        c.handshake().await;
        clients.push(c);
    }
    clients[0].send("broadcast:to-the-crowd").await;
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { c.text().await });
    }
    let mut n = 0;
    while let Some(text) = tokio::time::timeout(Duration::from_secs(30), tasks.join_next())
        .await
        .unwrap()
    {
        assert_eq!(text.unwrap(), "to-the-crowd");
        n += 1;
    }
    assert_eq!(n, 1000);
}
