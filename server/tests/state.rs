//! State frames: connect, client updates, validation, readonly, no-protocol.

use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn client_state_reaches_the_others_not_the_sender() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/counter-agent/s?_pk=a").await;
    let mut b = server.connect("/agents/counter-agent/s?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    a.send(r#"{"type":"cf_agent_state","state":{"count":7}}"#)
        .await;
    assert_eq!(
        b.json().await,
        json!({"type":"cf_agent_state","state":{"count":7}})
    );
    a.sentinel().await;
    let mut c = server.connect("/agents/counter-agent/s?_pk=c").await;
    let (_, state) = c.handshake().await;
    assert_eq!(state, Some(json!({"count":7})));
}

#[tokio::test]
async fn state_that_does_not_fit_the_type_is_rejected() {
    let server = TestServer::start(agents_server_cli::demo::server()).await;
    let mut a = server.connect("/agents/counter-agent/bad-state").await;
    a.handshake().await;
    a.send(r#"{"type":"cf_agent_state","state":{"count":"x"}}"#)
        .await;
    let reply = a.json().await;
    assert_eq!(reply["type"], "cf_agent_state_error");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.starts_with("State update rejected: invalid type"),
        "{error}"
    );
    let mut b = server.connect("/agents/counter-agent/bad-state").await;
    assert_eq!(b.handshake().await.1, Some(json!({"count":0})));
}

#[tokio::test]
async fn readonly_and_no_protocol_connections() {
    let (server, log) = start_with_probe().await;
    let mut ro = server
        .connect("/agents/probe-agent/flags?_pk=ro&readonly=1")
        .await;
    ro.handshake().await;
    ro.send(r#"{"type":"cf_agent_state","state":1}"#).await;
    assert_eq!(
        ro.json().await,
        json!({"type":"cf_agent_state_error","error":"Connection is readonly"})
    );
    // set_state from a readonly connection's event fails too.
    ro.send("state:2").await;
    assert!(wait_for(&log, "error ro on_message failed")
        .await
        .ends_with("Connection is readonly"));

    let mut np = server
        .connect("/agents/probe-agent/flags?_pk=np&noproto=1")
        .await;
    np.send("count").await;
    assert_eq!(np.text().await, "2");
    let mut rw = server.connect("/agents/probe-agent/flags?_pk=rw").await;
    rw.handshake().await;
    rw.send("state:null").await;
    // The writer gets the server's state broadcast; no-protocol never does.
    assert_eq!(
        rw.json().await,
        json!({"type":"cf_agent_state","state":null})
    );
    assert_eq!(
        ro.json().await,
        json!({"type":"cf_agent_state","state":null})
    );
    assert_eq!(wait_for(&log, "state server").await, "state server null");
    np.sentinel().await;
    // A null state still counts as state on connect.
    let mut late = server.connect("/agents/probe-agent/flags").await;
    assert_eq!(late.handshake().await.1, Some(json!(null)));
}
