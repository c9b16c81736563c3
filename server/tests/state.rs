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

/// A state frame with a `fill`-byte string in its state, and the state.
fn big_state(fill: usize, extra: &str) -> (String, serde_json::Value) {
    let state = json!({ "blob": "b".repeat(fill), "n": [1, 2.5, "\u{e9}\n"], "extra": extra });
    let frame = format!(r#"{{"state":{state},"type":"cf_agent_state"}}"#);
    (frame, state)
}

/// States past `LARGE_JSON` are read and written off the hot path (on the
/// worker between yields with one worker, on the blocking pool with more):
/// everything a small state does holds for them, byte for byte.
async fn large_states_behave_like_small_ones() {
    let fill = agents_server::LARGE_JSON * 3;
    let (server, log) = start_with_probe().await;
    let mut a = server.connect("/agents/probe-agent/big?_pk=a").await;
    let mut b = server.connect("/agents/probe-agent/big?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    // Broadcast to the others as the server encodes it, stored, notified.
    let (frame, state) = big_state(fill, "one");
    a.send(&frame).await;
    let got = b.text().await;
    assert_eq!(
        got,
        format!(
            r#"{{"type":"cf_agent_state","state":{}}}"#,
            serde_json::to_string(&state).unwrap()
        )
    );
    assert!(wait_for(&log, "state a ")
        .await
        .contains(r#""extra":"one""#));
    a.sentinel().await;
    // Refused by validation: nothing changes.
    let mut forbidden = state.clone();
    forbidden["forbidden"] = json!(true);
    let text = format!(r#"{{"type":"cf_agent_state","state":{forbidden}}}"#);
    a.send(&text).await;
    assert_eq!(
        a.json().await,
        json!({"type":"cf_agent_state_error","error":"State update rejected"})
    );
    // Malformed: not a protocol frame, so the agent's own message.
    let broken = format!("{frame} trailing");
    a.send(&broken).await;
    assert!(wait_for(&log, &format!("message {}", &broken[..40]))
        .await
        .ends_with("} trailing"));
    // Readonly connections are refused before anything is parsed.
    let mut ro = server
        .connect("/agents/probe-agent/big?_pk=ro&readonly=1")
        .await;
    assert_eq!(ro.handshake().await.1, Some(state.clone()));
    ro.send(&big_state(fill, "ro").0).await;
    assert_eq!(
        ro.json().await,
        json!({"type":"cf_agent_state_error","error":"Connection is readonly"})
    );
    b.sentinel().await;
    let mut c = server.connect("/agents/probe-agent/big?_pk=c").await;
    assert_eq!(c.handshake().await.1, Some(state));

    // A typed state: a large one that does not fit is refused with
    // serde's reason, positions counted within the state.
    let demo = TestServer::start(agents_server_cli::demo::server()).await;
    let mut d = demo.connect("/agents/counter-agent/big").await;
    d.handshake().await;
    let text = format!(
        r#"{{"type":"cf_agent_state","state":{{"pad":"{}","count":"x"}}}}"#,
        "p".repeat(fill)
    );
    d.send(&text).await;
    let reply = d.json().await;
    assert_eq!(
        reply["error"],
        format!(
            "State update rejected: invalid type: string \"x\", expected i64 at line 1 column {}",
            fill + 21
        )
    );
    d.sentinel().await;
}

#[tokio::test]
async fn large_states_with_one_worker() {
    large_states_behave_like_small_ones().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_states_with_two_workers() {
    large_states_behave_like_small_ones().await;
}

/// A state type whose `Deserialize` (the agent's own code) panics on the
/// string "boom".
#[derive(Debug, Clone, serde::Serialize)]
struct Touchy(i64);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "boom" => panic!("touchy state"),
            serde_json::Value::Number(n) => Ok(Touchy(n.as_i64().unwrap_or(0))),
            _ => Err(serde::de::Error::custom("not a number")),
        }
    }
}

struct TouchyAgent;

impl agents_server::Agent for TouchyAgent {
    type State = Touchy;

    async fn on_message(
        &mut self,
        _cx: &mut agents_server::AgentContext<Self>,
        conn: &agents_server::Connection,
        message: agents_server::Message,
    ) -> Result<(), agents_server::BoxError> {
        conn.send(message)?;
        Ok(())
    }
}

/// The state type's `Deserialize` is never run on messages that are not
/// state frames (a user message with a `state` key reaches `on_message`),
/// and when it panics on a state frame that state is refused with a
/// state error while the instance goes on serving.
#[tokio::test]
async fn a_panicking_state_type_refuses_the_state_not_the_instance() {
    let server =
        TestServer::start(agents_server::AgentServer::new().agent("TouchyAgent", |_| TouchyAgent))
            .await;
    let mut a = server.connect("/agents/touchy-agent/t?_pk=a").await;
    let mut b = server.connect("/agents/touchy-agent/t?_pk=b").await;
    a.handshake().await;
    b.handshake().await;
    let chat = r#"{"type":"chat","state":"boom"}"#;
    a.send(chat).await;
    assert_eq!(a.text().await, chat);
    a.send(r#"{"state":"boom","type":"cf_agent_state"}"#).await;
    let reply = a.json().await;
    assert_eq!(reply["type"], "cf_agent_state_error");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("Deserialize panicked"), "{error}");
    // Still serving, and a good state goes through.
    a.send(r#"{"state":5,"type":"cf_agent_state"}"#).await;
    assert_eq!(b.json().await, json!({"type":"cf_agent_state","state":5}));
    a.send("after").await;
    assert_eq!(a.text().await, "after");
}
