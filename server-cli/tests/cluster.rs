//! Cluster mode against a real NATS server (`NATS_SERVER`, installed by
//! `scripts/test.sh`) and three `agents-server --nats` nodes on 127.0.0.1:
//! forwarding that clients cannot tell from a direct connection, owner
//! crashes, a paused owner, and NATS itself restarting. Wide time margins
//! (two shared cores); outcomes are asserted, not timings.

#![allow(missing_docs)]

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Ws;

#[allow(unused_imports)]
#[path = "../../server/tests/util.rs"]
mod util;

use util::*;

#[path = "support/cluster.rs"]
mod support;

use support::*;

/// Many sockets on two other nodes: the owner sends each node's share of
/// a broadcast once, and every socket still gets every frame, in order,
/// broadcasts interleaved with the replies meant for it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_to_many_forwarded_sockets_arrive_whole_and_in_order() {
    const ON_ONE: usize = 12;
    const ON_TWO: usize = 4;
    const BROADCASTS: usize = 60;
    let (_nats, nodes) = cluster("fanout", 3).await;
    let path = "/agents/counter-agent/fan";
    let mut owner = Client::connect(&nodes[0].url(&format!("{path}?_pk=o"))).await;
    owner.handshake().await;
    let mut forwarded = Vec::new();
    for i in 0..ON_ONE + ON_TWO {
        let node = if i < ON_ONE { &nodes[1] } else { &nodes[2] };
        let mut c = Client::connect(&node.url(&format!("{path}?_pk=f{i}"))).await;
        c.handshake().await;
        forwarded.push(c);
    }
    assert!(nodes[0].runs("counter-agent").await);

    // Broadcasts from a forwarded socket (one sender: the order between
    // two senders is the order in which the owner gets their frames).
    for i in 0..BROADCASTS {
        forwarded[0].send(&format!("broadcast:m{i}")).await;
    }
    for c in std::iter::once(&mut owner).chain(forwarded.iter_mut()) {
        for i in 0..BROADCASTS {
            assert_eq!(c.text().await, format!("m{i}"));
        }
    }

    // Every forwarded socket calls at once: each sees all the states in
    // order, and its own reply right after the state its call made.
    for (i, c) in forwarded.iter_mut().enumerate() {
        c.send(&rpc(&format!("c{i}"), "increment", json!([1])))
            .await;
    }
    let calls = forwarded.len() as i64;
    for (i, c) in forwarded.iter_mut().enumerate() {
        let id = format!("c{i}");
        let (mut last, mut replied) = (0, false);
        while last < calls || !replied {
            let frame = c.json().await;
            if frame["type"] == "cf_agent_state" {
                let count = frame["state"]["count"].as_i64().unwrap();
                assert_eq!(count, last + 1, "socket {i}: states out of order");
                last = count;
            } else {
                assert_eq!(frame["id"], id.as_str(), "socket {i}: {frame}");
                assert_eq!(frame["result"], last, "socket {i}: reply before its state");
                assert!(!replied);
                replied = true;
            }
        }
        c.sentinel().await;
    }
    for count in 1..=calls {
        assert_eq!(owner.json().await["state"]["count"], count);
    }
    owner.sentinel().await;
}

/// A frame larger than NATS carries (the harness's `max_payload` is 8 MB)
/// closes the forwarded sockets it was for with 1009; the downlink between
/// the two nodes goes on for their other sockets and for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_too_large_for_nats_closes_its_sockets_not_the_link() {
    let (_nats, nodes) = cluster("oversize", 2).await;
    let path = "/agents/counter-agent/big";
    let mut owner = Client::connect(&nodes[0].url(&format!("{path}?_pk=o"))).await;
    owner.handshake().await;
    let mut far = Client::connect(&nodes[1].url(&format!("{path}?_pk=f"))).await;
    far.handshake().await;
    // Another instance on the same owner, with a socket on the same node.
    let mut echo_owner = Client::connect(&nodes[0].url("/agents/echo-agent/x")).await;
    echo_owner.handshake().await;
    let mut echo_far = Client::connect(&nodes[1].url("/agents/echo-agent/x")).await;
    echo_far.handshake().await;
    assert!(nodes[0].runs("counter-agent").await && nodes[0].runs("echo-agent").await);

    let big = "x".repeat(9 << 20);
    owner.send(&format!("broadcast:{big}")).await;
    assert_eq!(owner.text().await.len(), big.len());
    assert_eq!(far.closed().await.0, 1009);
    drop(big);
    // The link goes on: the other instance's forwarded socket, and a new
    // forwarded socket to the same instance.
    echo_far.send("still here").await;
    assert_eq!(echo_far.text().await, "still here");
    let mut again = Client::connect(&nodes[1].url(&format!("{path}?_pk=g"))).await;
    again.handshake().await;
    owner.send("broadcast:small").await;
    assert_eq!(again.text().await, "small");
    assert_eq!(owner.text().await, "small");
}

/// Sockets through another node that vanish while they are being opened
/// (the client sends its upgrade and goes) leave no connection behind on
/// the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_gone_while_opening_leave_nothing_on_the_owner() {
    use tokio::io::AsyncWriteExt;
    let (_nats, nodes) = cluster("vanish", 2).await;
    let path = "/agents/chat-agent/room";
    let mut observer = Client::connect(&nodes[0].url(&format!("{path}?_pk=observer"))).await;
    observer.handshake().await;
    assert!(nodes[0].runs("chat-agent").await);
    let addr = nodes[1].addr;
    for i in 0..30 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET {path}?_pk=gone{i} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // Upgraded (the socket is being opened on the owner), then gone
        // abruptly (a reset, not a close).
        let mut answer = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
            .await
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 101");
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        observer
            .send(&rpc(&format!("w{n}"), "who", json!([])))
            .await;
        let ids = reply(&mut observer, &format!("w{n}")).await["result"].clone();
        if ids == json!(["observer"]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections left on the owner: {ids}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sockets on three nodes reach one owner: connect frames, echo, state
/// sync, RPC (streaming too), broadcast across nodes, close codes and
/// reasons both ways, plain HTTP, and `on_close` on the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_on_any_node_reach_the_one_owner() {
    let (_nats, nodes) = cluster("forward", 3).await;
    let path = "/agents/counter-agent/shared";
    let mut a = Client::connect(&nodes[0].url(&format!("{path}?_pk=a"))).await;
    assert_eq!(a.handshake().await.1, Some(json!({"count": 0})));
    let mut b = Client::connect(&nodes[1].url(&format!("{path}?_pk=b"))).await;
    let mut c = Client::connect(&nodes[2].url(&format!("{path}?_pk=c"))).await;
    let (identity, state) = b.handshake().await;
    assert_eq!(identity["name"], "shared");
    assert_eq!(identity["agent"], "counter-agent");
    assert_eq!(state, Some(json!({"count": 0})));
    c.handshake().await;
    assert!(nodes[0].runs("counter-agent").await);
    assert!(!nodes[1].runs("counter-agent").await && !nodes[2].runs("counter-agent").await);
    // The frames take the way the nodes were started for.
    for node in &nodes[1..] {
        let (direct, nats) = (node.links_via("direct").await, node.links_via("nats").await);
        match support::direct() {
            true => assert!(direct >= 1.0 && nats == 0.0, "{direct} {nats}"),
            false => assert!(direct == 0.0 && nats >= 1.0, "{direct} {nats}"),
        }
    }

    // RPC from a forwarded socket: the state reaches all three, then the reply.
    b.send(&rpc("1", "increment", json!([5]))).await;
    for client in [&mut a, &mut c] {
        assert_eq!(
            client.json().await,
            json!({"type":"cf_agent_state","state":{"count":5}})
        );
    }
    assert_eq!(b.json().await["state"]["count"], 5);
    assert_eq!(reply(&mut b, "1").await["result"], 5);
    // Streaming.
    c.send(&rpc("s", "count_to", json!([3]))).await;
    for i in 1..3 {
        assert_eq!(c.json().await["result"], i);
    }
    assert_eq!(reply(&mut c, "s").await["result"], 3);
    // Broadcast from one node reaches the others, in order.
    for i in 0..20 {
        c.send(&format!("broadcast:m{i}")).await;
    }
    for client in [&mut a, &mut b, &mut c] {
        for i in 0..20 {
            assert_eq!(client.text().await, format!("m{i}"));
        }
    }
    // A client state from a forwarded socket reaches the others.
    c.send(r#"{"type":"cf_agent_state","state":{"count":42}}"#)
        .await;
    assert_eq!(a.json().await["state"]["count"], 42);
    assert_eq!(b.json().await["state"]["count"], 42);
    c.sentinel().await;
    // Plain HTTP through a node that does not own the instance.
    assert_eq!(
        http_get(nodes[2].addr, "/agents/counter-agent/shared", &[]).await,
        (200, r#"{"count":42}"#.into())
    );

    // Echo with binary frames, through a non-owner.
    let mut e = Client::connect(&nodes[1].url("/agents/echo-agent/e")).await;
    e.handshake().await;
    e.send_binary(&[0, 1, 2, 255]).await;
    assert_eq!(e.binary().await, vec![0, 1, 2, 255]);
    let big = "x".repeat(1 << 20);
    e.send(&big).await;
    assert_eq!(e.text().await, big);

    // The agent's close code and reason reach a forwarded client.
    let mut p = Client::connect(&nodes[2].url("/agents/private-agent/p")).await;
    p.handshake().await;
    assert_eq!(p.closed().await, (4001, "Unauthorized".into()));

    // A forwarded client's close ends its connection on the owner.
    let mut chat_a = Client::connect(&nodes[0].url("/agents/chat-agent/room?_pk=ann")).await;
    chat_a.handshake().await;
    let mut chat_b = Client::connect(&nodes[1].url("/agents/chat-agent/room?_pk=bob")).await;
    chat_b.handshake().await;
    chat_a.send(&rpc("w1", "who", json!([]))).await;
    assert_eq!(
        reply(&mut chat_a, "w1").await["result"],
        json!(["ann", "bob"])
    );
    chat_b.close(4002, "leaving").await;
    assert_eq!(chat_b.closed().await, (4002, "leaving".into()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        chat_a.send(&rpc("w2", "who", json!([]))).await;
        if reply(&mut chat_a, "w2").await["result"] == json!(["ann"]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owner never saw bob leave"
        );
    }
}

/// The official `agents` client against a node that owns none of its
/// instances: the whole compatibility suite passes unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_cannot_tell_which_node_it_talks_to() {
    let (_nats, nodes) = cluster("compat", 2).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("npm")
            .args(["--prefix", "tests/compat", "test"])
            .current_dir(&root)
            .env("AGENTS_COMPAT_HOST", nodes[1].addr.to_string())
            .env("AGENTS_COMPAT_OWNER", nodes[0].addr.to_string())
            .output(),
    )
    .await
    .expect("the compatibility suite hung")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "compat suite failed:\n{text}");
    assert!(text.contains("ℹ fail 0"), "{text}");
    assert!(
        nodes[0].runs("counter-agent").await,
        "the owner was not node 0"
    );
    assert!(!nodes[1].runs("counter-agent").await);
}

/// A client that keeps calling `increment` on one node, reconnecting
/// whenever its socket ends: counts what was sent and what acknowledged.
struct Caller {
    node_urls: Vec<String>,
    sent: u64,
    acked: u64,
    /// 1012 closes seen (the owner went away).
    restarts: u64,
}

impl Caller {
    /// Calls until `stop` is set; ends after the call in flight.
    async fn run(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Caller {
        let mut node = 0;
        'outer: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let url = &self.node_urls[node % self.node_urls.len()];
            let Ok(Ok((ws, _))) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_tungstenite::connect_async(url),
            )
            .await
            else {
                node += 1; // that node is down: try another
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut c = Client { ws };
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break 'outer;
                }
                self.sent += 1;
                let id = self.sent.to_string();
                if futures_util::SinkExt::send(
                    &mut c.ws,
                    Ws::text(rpc(&id, "increment", json!([1]))),
                )
                .await
                .is_err()
                {
                    break;
                }
                // Until our reply, or the socket's end.
                let acked = loop {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        futures_util::StreamExt::next(&mut c.ws),
                    )
                    .await
                    {
                        Ok(Some(Ok(Ws::Text(t)))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                            if v["type"] == "rpc" && v["id"] == id.as_str() {
                                break v["result"].as_u64();
                            }
                        }
                        Ok(Some(Ok(Ws::Close(f)))) => {
                            if f.is_some_and(|f| u16::from(f.code) == 1012) {
                                self.restarts += 1;
                            }
                            break None;
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => break None,
                    }
                };
                match acked {
                    Some(count) => self.acked = self.acked.max(count),
                    None => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }
}

/// The counter's value, read over plain HTTP from any live node.
async fn count(nodes: &[&Node]) -> u64 {
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        for node in nodes {
            let (status, body) = http_get(node.addr, "/agents/counter-agent/crash", &[]).await;
            if status == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                return v["count"].as_u64().unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node served the counter"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kill -9` of the owner while clients on every node call `increment`,
/// ten times: clients on live nodes are closed with 1012 and reconnect, the
/// instance is served again, and every acknowledged increment survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_loses_nothing_acknowledged() {
    let (nats, mut nodes) = cluster("crash", 3).await;
    let path = "/agents/counter-agent/crash";
    for round in 0..10 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut callers = Vec::new();
        for i in 0..3 {
            let urls = (0..3).map(|j| nodes[(i + j) % 3].url(path)).collect();
            let caller = Caller {
                node_urls: urls,
                sent: 0,
                acked: 0,
                restarts: 0,
            };
            callers.push(tokio::spawn(caller.run(stop.clone())));
        }
        // Find the owner once it serves, let the calls run, then kill it.
        let deadline = tokio::time::Instant::now() + FAILOVER;
        let owner = loop {
            let mut found = None;
            for (i, node) in nodes.iter().enumerate() {
                if node.runs("counter-agent").await {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no owner"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let before = count(&[&nodes[owner]]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[owner].child.kill().await.unwrap();
        let survivors: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != owner)
            .map(|(_, n)| n)
            .collect();
        // Served again: a fresh client's call succeeds through a survivor.
        let deadline = tokio::time::Instant::now() + FAILOVER;
        while try_increment(&survivors[0].url(path), 0).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: not served again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sent = 0;
        let mut acked = 0;
        let mut restarts = 0;
        for caller in callers {
            let c = tokio::time::timeout(FAILOVER, caller)
                .await
                .expect("a caller hung")
                .unwrap();
            sent += c.sent;
            acked = acked.max(c.acked);
            restarts += c.restarts;
        }
        let after = count(&survivors).await;
        assert!(
            after >= acked,
            "round {round}: lost acknowledged increments ({after} < {acked})"
        );
        assert!(
            after <= before + sent,
            "round {round}: more increments than calls"
        );
        assert!(
            restarts >= 1,
            "round {round}: no client on a live node saw 1012"
        );
        // A new node takes the dead one's place.
        nodes[owner] = Node::start(&nats.url()).await;
    }
}

/// An owner paused for 3 × TTL is replaced; when it resumes it finds
/// itself fenced: it closes its clients, and nothing it does lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_replaced_and_fenced() {
    let (_nats, nodes) = cluster("pause", 2).await;
    let path = "/agents/counter-agent/crash";
    let mut direct = Client::connect(&nodes[0].url(path)).await;
    direct.handshake().await;
    direct.send(&rpc("1", "increment", json!([1]))).await;
    assert_eq!(reply(&mut direct, "1").await["result"], 1);
    assert!(nodes[0].runs("counter-agent").await);

    nodes[0].signal("STOP");
    // Sent while the owner is paused: it reads it only after resuming.
    direct.send(&rpc("stale", "increment", json!([100]))).await;
    // The other node takes over once the paused one's lease is gone.
    let deadline = tokio::time::Instant::now() + FAILOVER;
    let acked = loop {
        if let Some(count) = try_increment(&nodes[1].url(path), 1).await {
            break count;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the paused owner was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(acked, 2);
    tokio::time::sleep(Duration::from_secs(3 * TTL)).await;
    nodes[0].signal("CONT");
    // The stale owner closes its client (1012), never answering the call.
    let closed = tokio::time::timeout(FAILOVER, async {
        loop {
            match futures_util::StreamExt::next(&mut direct.ws).await {
                Some(Ok(Ws::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    assert_ne!(v["id"], "stale", "the fenced owner answered: {v}");
                }
                Some(Ok(Ws::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("the fenced owner's socket ended without a close: {other:?}"),
            }
        }
    })
    .await
    .expect("the fenced owner kept its client");
    assert_eq!(closed, Some(1012));
    assert_eq!(
        count(&[&nodes[1]]).await,
        2,
        "a write of the fenced owner landed"
    );
    // And the resumed node serves again under a new lease, forwarding to the new owner.
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        match try_increment(&nodes[0].url(path), 1).await {
            Some(count) => {
                assert_eq!(count, 3);
                break;
            }
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the resumed node never served again"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// NATS killed and restarted: nodes fence themselves (clients closed with
/// 1012, readiness 503), then serve again, with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_fences_the_nodes_then_they_serve_again() {
    let (mut nats, nodes) = cluster("restart", 2).await;
    let path = "/agents/counter-agent/crash";
    let mut c = Client::connect(&nodes[1].url(path)).await;
    c.handshake().await;
    c.send(&rpc("1", "increment", json!([7]))).await;
    assert_eq!(reply(&mut c, "1").await["result"], 7);
    assert_eq!(http_get(nodes[0].admin, "/readyz", &[]).await.0, 200);
    nats.kill().await;
    // Within the lease TTL the nodes stop serving.
    let closed = tokio::time::timeout(FAILOVER, c.closed())
        .await
        .expect("not fenced");
    assert_eq!(closed.0, 1012);
    let deadline = tokio::time::Instant::now() + FAILOVER;
    while http_get(nodes[0].admin, "/readyz", &[]).await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready without NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.restart().await;
    let deadline = tokio::time::Instant::now() + FAILOVER;
    for node in &nodes {
        while http_get(node.admin, "/readyz", &[]).await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready after NATS came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut c = Client::connect(&nodes[0].url(path)).await;
    assert_eq!(c.handshake().await.1, Some(json!({"count": 7})));
    c.send(&rpc("2", "increment", json!([1]))).await;
    assert_eq!(reply(&mut c, "2").await["result"], 8);
}

/// A graceful stop (SIGTERM) of the owner hands its instances over at once:
/// its clients get 1001 and, reconnecting through another node, are served
/// long before its 60 s lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_owner_hands_over_at_once() {
    let nats = Nats::start("leave").await;
    let nodes = [
        Node::start_with_ttl(&nats.url(), 60).await,
        Node::start_with_ttl(&nats.url(), 60).await,
    ];
    let path = "/agents/counter-agent/crash";
    let mut c = Client::connect(&nodes[0].url(path)).await;
    c.handshake().await;
    c.send(&rpc("1", "increment", json!([4]))).await;
    assert_eq!(reply(&mut c, "1").await["result"], 4);
    nodes[0].signal("TERM");
    assert_eq!(c.closed().await, (1001, "Server shutting down".into()));
    // The lease is given up: no wait for it to expire.
    let started = tokio::time::Instant::now();
    let count = loop {
        if let Some(count) = try_increment(&nodes[1].url(path), 1).await {
            break count;
        }
        assert!(started.elapsed() < FAILOVER, "not taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(count, 5);
}

/// An agent whose `on_request` and `on_connect` take `?ms=` milliseconds
/// (awaiting slow work, as a call to another service would).
#[derive(Default)]
struct Slow {
    /// Messages received; the message `count` is answered with it.
    received: usize,
}

impl agents_server::Agent for Slow {
    type State = Value;

    async fn on_message(
        &mut self,
        _cx: &mut agents_server::AgentContext<Self>,
        conn: &agents_server::Connection,
        message: agents_server::Message,
    ) -> Result<(), agents_server::BoxError> {
        if message.as_text() == Some("count") {
            conn.send(self.received.to_string())?;
        } else {
            self.received += 1;
        }
        Ok(())
    }

    async fn on_connect(
        &mut self,
        _cx: &mut agents_server::AgentContext<Self>,
        _conn: &agents_server::Connection,
        ctx: &agents_server::ConnectContext,
    ) -> Result<(), agents_server::BoxError> {
        let ms: u64 = ctx.request().query("ms").unwrap_or("0").parse()?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn on_request(
        &mut self,
        _cx: &mut agents_server::AgentContext<Self>,
        request: axum::http::Request<axum::body::Body>,
    ) -> Result<axum::response::Response, agents_server::BoxError> {
        use axum::response::IntoResponse;
        let ms: u64 = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .unwrap_or("0")
            .parse()?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms}").into_response())
    }
}

/// A NATS server and two in-process nodes serving [`Slow`] on it, with the
/// cluster options `options` makes of the defaults.
async fn slow_cluster(
    what: &str,
    options: impl Fn(agents_server::ClusterOptions) -> agents_server::ClusterOptions,
) -> (Nats, Vec<TestServer>) {
    let nats = Nats::start(what).await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut options = options(agents_server::ClusterOptions::new([nats.url()]));
        if support::direct() {
            options = options.direct(([127, 0, 0, 1], 0).into(), None);
        }
        nodes.push(slow_node(options).await.0);
    }
    (nats, nodes)
}

/// An in-process node serving [`Slow`] with cluster `options`, and the
/// address it tells other nodes for direct connections, if it listens.
async fn slow_node(options: agents_server::ClusterOptions) -> (TestServer, Option<String>) {
    let cluster = agents_server::Cluster::connect(options).await.unwrap();
    let addr = cluster.direct_addr();
    let server = agents_server::AgentServer::new()
        .agent("Slow", |_| Slow::default())
        .cluster(cluster);
    (TestServer::start(server).await, addr)
}

/// A plain HTTP request, or a socket, through a node that does not own the
/// instance waits for the owner's `on_request` or `on_connect` as long as
/// it takes, as on one node (the forwarding gave up after 2 s with 503 or
/// 1013, while the owner went on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_hooks_answer_through_another_node() {
    let (_nats, nodes) = slow_cluster("slow-http", |options| options).await;
    // The first request makes node 0 the owner.
    let path = "/agents/slow/one";
    assert_eq!(
        nodes[0].get(&format!("{path}?ms=0")).await,
        (200, "slept 0".into())
    );
    assert_eq!(
        nodes[1].get(&format!("{path}?ms=3000")).await,
        (200, "slept 3000".into())
    );
    let mut slow = nodes[1].connect(&format!("{path}?ms=3000")).await;
    // (Within the client's wait for a frame: 5 s.)
    assert_eq!(slow.json().await["type"], "cf_agent_identity");
    drop(slow);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Owner hooks slower than `forward_timeout`: a request through another
/// node answers 504 and a socket opening there closes with 1013 once it
/// has passed, while the owner's own requests wait for the hooks as long
/// as they take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_hooks_give_up_after_the_forward_timeout() {
    let (_nats, nodes) = slow_cluster("forward-timeout", |options| {
        options.forward_timeout(Duration::from_secs(1))
    })
    .await;
    let path = "/agents/slow/late";
    // The first request makes node 0 the owner.
    assert_eq!(
        nodes[0].get(&format!("{path}?ms=1500")).await,
        (200, "slept 1500".into())
    );
    assert_eq!(
        nodes[1].get(&format!("{path}?ms=3000")).await,
        (504, "The agent took too long".into())
    );
    let mut late = nodes[1].connect(&format!("{path}?ms=3000")).await;
    assert_eq!(late.closed().await, (1013, "Try again later".into()));
    // (No graceful shutdown: the instance is still in those hooks.)
}

/// A short NATS outage, well within the lease: messages between nodes may
/// have been lost where no later message would show it (a gap is seen
/// only when something follows), so what crosses nodes ends — a forwarded
/// socket is closed with 1012, a forwarded HTTP request answers 503 and a
/// socket still opening is closed with 1012, rather than waiting for the
/// owner's 10 s hooks, whose answers may never come. The owner's own
/// socket and the instance go on, and new forwarded sockets work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_ends_what_crosses_nodes_and_nothing_else() {
    // A lease far longer than the outage: nothing is fenced.
    let (mut nats, nodes) = slow_cluster("outage", |options| {
        options.lease_ttl(Duration::from_secs(60))
    })
    .await;
    // Node 0 owns both instances: the first touch is there. The slow
    // hooks run on the second one (an instance runs its hooks one at a
    // time, so it is busy for a while).
    let (path, busy) = ("/agents/slow/outage", "/agents/slow/busy");
    let mut local = nodes[0].connect(path).await;
    local.handshake().await;
    assert_eq!(nodes[0].get(busy).await.0, 200);
    let mut forwarded = nodes[1].connect(path).await;
    forwarded.handshake().await;
    let entry = nodes[1].addr;
    let request =
        tokio::spawn(async move { http_get(entry, &format!("{busy}?ms=10000"), &[]).await });
    let mut opening = nodes[1].connect(&format!("{busy}?ms=10000")).await;
    // Both have reached the owner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.kill().await;
    nats.restart().await;
    assert_eq!(forwarded.closed().await, (1012, "Service restart".into()));
    assert_eq!(opening.closed().await, (1012, "Service restart".into()));
    let answer = tokio::time::timeout(WAIT, request)
        .await
        .expect("request hangs");
    assert_eq!(answer.unwrap(), (503, "Try again later".into()));
    // Forwarding works again, and the owner's socket was left alone.
    let mut again = nodes[1].connect(path).await;
    again.handshake().await;
    local
        .send(r#"{"type":"cf_agent_state","state":{"after":"outage"}}"#)
        .await;
    assert_eq!(
        again.json().await,
        json!({"type":"cf_agent_state","state":{"after":"outage"}})
    );
    // (No graceful shutdown: the busy instance's hooks would hold it up.)
}

/// Messages a forwarded client sends in one write (read together, they go
/// up as one pack) and the owner's replies (taken together, they come
/// down packed) arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_together_cross_nodes_whole_and_in_order() {
    const BURST: usize = 300;
    let (_nats, nodes) = cluster("packs", 2).await;
    let path = "/agents/echo-agent/packs";
    let mut owner = Client::connect(&nodes[0].url(path)).await;
    owner.handshake().await;
    let mut raw = Raw::connect(nodes[1].addr, path, &[]).await;
    while raw.next_frame().await.expect("connect frames").1 != MCP_FRAME.as_bytes() {}
    let mut burst = Vec::new();
    for i in 0..BURST {
        burst.extend(Raw::frame(true, 0x1, format!("m{i}").as_bytes()));
    }
    raw.write(&burst).await;
    for i in 0..BURST {
        let (opcode, payload) = raw.next_frame().await.expect("echo");
        assert_eq!(
            (opcode, String::from_utf8(payload).unwrap()),
            (0x1, format!("m{i}"))
        );
    }
    owner.sentinel().await;
}

/// A client flooding a busy instance through another node is held back
/// as on the instance's own node — the entry node stops reading its socket
/// while a window of its messages waits on the owner — rather than piling
/// them up on the owner as fast as NATS carries them; once the instance is
/// free, every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_a_busy_instance_through_another_node_is_held_back() {
    // 50 MiB: far more than the window, the instance's inbox (8 MiB) and
    // the sockets' kernel buffers together.
    const MESSAGES: usize = 800;
    let (_nats, nodes) = slow_cluster("flood", |options| options).await;
    let path = "/agents/slow/flood";
    // The first request makes node 0 the owner.
    assert_eq!(nodes[0].get(path).await.0, 200);
    let mut client = nodes[1].connect(path).await;
    client.handshake().await;
    let (mut sink, mut stream) = futures_util::StreamExt::split(client.ws);
    // The instance is busy for 4 s in its owner's `on_request`.
    let owner = nodes[0].addr;
    let busy = tokio::spawn(async move { http_get(owner, &format!("{path}?ms=4000"), &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flood = tokio::spawn(async move {
        let chunk = "x".repeat(64 * 1024);
        for _ in 0..MESSAGES {
            futures_util::SinkExt::send(&mut sink, Ws::text(chunk.clone()))
                .await
                .unwrap();
        }
        futures_util::SinkExt::send(&mut sink, Ws::text("count"))
            .await
            .unwrap();
        sink
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!flood.is_finished(), "the flood was not held back");
    assert_eq!(busy.await.unwrap(), (200, "slept 4000".into()));
    let mut sink = tokio::time::timeout(FAILOVER, flood)
        .await
        .expect("the flood never got through")
        .unwrap();
    let count = loop {
        let frame = tokio::time::timeout(FAILOVER, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("no count")
            .expect("stream ended")
            .unwrap();
        if let Ws::Text(t) = frame {
            if let Ok(n) = t.as_str().parse::<usize>() {
                break n;
            }
        }
    };
    assert_eq!(count, MESSAGES);
    // A message larger than three quarters of the window, after small
    // ones the owner has not yet granted for, still goes (alone).
    let big = "y".repeat(1 << 20);
    for text in [big.as_str(), "count"] {
        futures_util::SinkExt::send(&mut sink, Ws::text(text))
            .await
            .unwrap();
    }
    let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
        .await
        .expect("the large message is stuck")
        .expect("stream ended")
        .unwrap();
    assert_eq!(frame, Ws::text((MESSAGES + 1).to_string()));
}

/// The listener for direct connections from other nodes takes only nodes
/// that know its secret (told over NATS): garbage, a wrong secret or
/// silence get the connection closed (silence after 2 s), and the sockets
/// forwarded over the real link go on, as do new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_direct_port_are_turned_away() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start("direct-hostile").await;
    let mut nodes = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..2 {
        let (node, addr) = slow_direct_node(&nats, None).await;
        nodes.push(node);
        direct.push(addr);
    }
    let path = "/agents/slow/hostile";
    let mut owner = Client::connect(&nodes[0].url(path)).await;
    owner.handshake().await;
    let mut far = Client::connect(&nodes[1].url(path)).await;
    far.handshake().await;
    far.send("one").await;

    // A hello of the right shape whose mac is not made with the secret.
    let mut wrong_secret = b"AGL2".to_vec();
    wrong_secret.extend_from_slice(&[0; 16 + 32]);
    wrong_secret.push(4);
    wrong_secret.extend_from_slice(b"evil");
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20);
    for hello in [garbage, wrong_secret, Vec::new()] {
        let mut stranger = tokio::net::TcpStream::connect(&direct[0]).await.unwrap();
        // The owner's challenge comes first, whoever connects.
        let mut challenge = [0u8; 20];
        tokio::time::timeout(WAIT, stranger.read_exact(&mut challenge))
            .await
            .expect("a challenge")
            .unwrap();
        assert_eq!(&challenge[..4], b"AGL2");
        stranger.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 64];
        // Closed without an answer (reset or end of stream), not left open.
        let read = tokio::time::timeout(WAIT, stranger.read(&mut buf))
            .await
            .expect("the stranger's connection is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    far.send("two").await;
    far.send("count").await;
    assert_eq!(far.text().await, "2");
    let mut again = Client::connect(&nodes[1].url(path)).await;
    again.handshake().await;
    again.send("count").await;
    assert_eq!(again.text().await, "2");
    owner.sentinel().await;
}

/// A node on `nats` serving `Slow` and listening for direct connections
/// on 127.0.0.1 (other nodes told `advertise`, else where it listens),
/// and the address it advertises.
async fn slow_direct_node(nats: &Nats, advertise: Option<String>) -> (TestServer, String) {
    let options = agents_server::ClusterOptions::new([nats.url()])
        .direct(([127, 0, 0, 1], 0).into(), advertise);
    let (node, addr) = slow_node(options).await;
    (node, addr.expect("listens"))
}

/// A node dropped (in a process that goes on) stops listening for
/// direct connections at once.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_frees_its_direct_port() {
    let nats = Nats::start("direct-dropped").await;
    let options =
        agents_server::ClusterOptions::new([nats.url()]).direct(([127, 0, 0, 1], 0).into(), None);
    let cluster = agents_server::Cluster::connect(options).await.unwrap();
    let addr = cluster.direct_addr().expect("listens");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(listening(port));
    drop(cluster);
    // Watched from the kernel's table: a connection attempt would itself
    // wake the listener.
    let deadline = tokio::time::Instant::now() + WAIT;
    while listening(port) {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a socket listens on TCP `port` (IPv4) in this machine's table.
#[cfg(target_os = "linux")]
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
    })
}

/// An owner whose direct address cannot be used (here: it accepts and
/// never says a word) is tried once: its sockets go through NATS, and the
/// next link to it, within `DIRECT_RETRY`, does not wait on it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_direct_address_is_tried_once() {
    let nats = Nats::start("direct-unusable").await;
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    let _mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let mut nodes = Vec::new();
    for advertise in [Some(mute_addr), None] {
        nodes.push(slow_direct_node(&nats, advertise).await.0);
    }
    let path = "/agents/slow/unusable";
    let mut owner = Client::connect(&nodes[0].url(path)).await;
    owner.handshake().await;
    for round in 1..=2 {
        let mut far = Client::connect(&nodes[1].url(path)).await;
        far.handshake().await;
        far.send("one").await;
        far.send("count").await;
        assert_eq!(far.text().await, round.to_string());
        far.close(1000, "").await;
        // Long enough for the entry node to drop its link to the owner
        // (no socket left there), so that the next socket links anew.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    owner.sentinel().await;
}

/// A node with `--direct-addr` and one without, each owning an instance
/// the other forwards to: frames to the first go over the direct
/// connection, frames to the second through NATS, and neither way takes
/// the other's path (the owner of the second instance once sent its
/// frames down the connection the other node had opened to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_and_without_direct_connections_forward_both_ways() {
    let nats = Nats::start("mixed").await;
    let ttl = TTL.to_string();
    let with = Node::start_with(&[
        "--nats",
        &nats.url(),
        "--lease-ttl",
        &ttl,
        "--direct-addr",
        "127.0.0.1:0",
    ])
    .await;
    let without = Node::start_with(&["--nats", &nats.url(), "--lease-ttl", &ttl]).await;
    // `a` lives on the node that listens, `b` on the one that does not.
    let mut a_owner = Client::connect(&with.url("/agents/echo-agent/a")).await;
    a_owner.handshake().await;
    let mut b_owner = Client::connect(&without.url("/agents/echo-agent/b")).await;
    b_owner.handshake().await;
    for round in 0..2 {
        // Through the direct connection first, then through NATS.
        let mut a_far = Client::connect(&without.url("/agents/echo-agent/a")).await;
        a_far.handshake().await;
        let mut b_far = Client::connect(&with.url("/agents/echo-agent/b")).await;
        b_far.handshake().await;
        for i in 0..20 {
            a_far.send(&format!("a{round}.{i}")).await;
            b_far.send(&format!("b{round}.{i}")).await;
        }
        for i in 0..20 {
            assert_eq!(a_far.text().await, format!("a{round}.{i}"));
            assert_eq!(b_far.text().await, format!("b{round}.{i}"));
        }
        a_far.close(1000, "").await;
        b_far.close(1000, "").await;
    }
    assert!(without.links_via("direct").await >= 1.0);
    assert!(with.links_via("nats").await >= 1.0 && with.links_via("direct").await == 0.0);
    a_owner.sentinel().await;
    b_owner.sentinel().await;
}
