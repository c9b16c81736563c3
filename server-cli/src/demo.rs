//! The example agents the `agents-server` binary serves. `EchoAgent` and
//! `CounterAgent` behave like the reference's `reference-agents.ts`.

use axum::body::Body;
use axum::http::{self, header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use agents_server::{
    Agent, AgentContext, AgentServer, BoxError, Call, ConnectContext, Connection, Message, Reply,
    RpcError, StateSource,
};

/// Longest `count_to` stream [`CounterAgent`] accepts. The chunks are
/// queued for the caller in one go, so this stays well under the per-connection
/// outbound queue ([`DEFAULT_OUTBOUND_QUEUE`](agents_server::DEFAULT_OUTBOUND_QUEUE)).
pub const MAX_COUNT_TO: u32 = 1000;

/// Messages [`ChatAgent`] keeps in its state for newcomers.
pub const CHAT_HISTORY: usize = 100;

/// Longest chat message [`ChatAgent`] stores, in bytes; longer ones are cut.
pub const MAX_CHAT_MESSAGE: usize = 4096;

/// Sends `message` back to `conn`.
fn echo(conn: &Connection, message: Message) -> Result<(), BoxError> {
    conn.send(message)?;
    Ok(())
}

/// `echo-agent`: echoes every text and binary message to its sender.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoAgent;

impl Agent for EchoAgent {
    type State = serde_json::Value;

    async fn on_message(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        echo(conn, message)
    }
}

/// The state of [`CounterAgent`]: `{"count":0}` to start.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    /// The counter.
    pub count: i64,
}

/// `counter-agent`: state `{"count":0}`; the text `broadcast:<x>` sends
/// `<x>` to every connection; callable `increment(by)` (returns the new
/// count) and streaming `count_to(n)` (streams 1..n, ends with n); plain
/// `GET` answers the state as JSON (what `agentFetch` reads).
#[derive(Debug, Default, Clone, Copy)]
pub struct CounterAgent;

impl Agent for CounterAgent {
    type State = CounterState;

    fn initial_state(&self) -> Option<CounterState> {
        Some(CounterState::default())
    }

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        _conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        if let Some(rest) = message.as_text().and_then(|t| t.strip_prefix("broadcast:")) {
            cx.broadcast(rest, &[]);
        }
        Ok(())
    }

    async fn on_request(
        &mut self,
        cx: &mut AgentContext<Self>,
        request: http::Request<Body>,
    ) -> Result<Response, BoxError> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return Ok((StatusCode::METHOD_NOT_ALLOWED, "Use GET").into_response());
        }
        let json = serde_json::to_string(&cx.state())?;
        Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
    }

    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        match call.method() {
            "increment" => {
                let (by,): (i64,) = call.args()?;
                let count = cx
                    .state()
                    .map_or(0, |s| s.count)
                    .checked_add(by)
                    .ok_or_else(|| RpcError::msg("count overflow"))?;
                cx.set_state(CounterState { count })?;
                Reply::json(&count)
            }
            "count_to" => {
                let (n,): (u32,) = call.args()?;
                if n > MAX_COUNT_TO {
                    return Err(RpcError::msg(format!("n must be at most {MAX_COUNT_TO}")));
                }
                let stream = call.stream();
                for i in 1..n {
                    stream.send(&i)?;
                }
                Reply::json(&n)
            }
            _ => Err(RpcError::NoSuchMethod),
        }
    }
}

/// One message of a [`ChatAgent`] room's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The sender's connection id.
    pub from: String,
    /// The text as sent (cut to [`MAX_CHAT_MESSAGE`] bytes).
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
}

/// The state of [`ChatAgent`]: the last [`CHAT_HISTORY`] messages.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatState {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
}

/// `chat-agent`: a chat room that broadcasts each text message to every
/// connection, the sender included, and keeps the recent history in its
/// (synced, durable) state so a newcomer sees past messages. Callable
/// `who()` lists the connection ids in the room.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChatAgent;

impl Agent for ChatAgent {
    type State = ChatState;

    fn initial_state(&self) -> Option<ChatState> {
        Some(ChatState::default())
    }

    /// Clients may not rewrite the history.
    fn validate_state_change(
        &self,
        _next: &ChatState,
        source: &StateSource,
    ) -> Result<(), BoxError> {
        match source {
            StateSource::Server => Ok(()),
            StateSource::Client(_) => Err("the chat history is server-owned".into()),
        }
    }

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        let Some(text) = message.as_text() else {
            return Ok(());
        };
        let mut cut = text.len().min(MAX_CHAT_MESSAGE);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let entry = ChatMessage {
            from: conn.id().to_owned(),
            text: text[..cut].to_owned(),
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        cx.broadcast(message, &[]);
        let mut state = cx.state().cloned().unwrap_or_default();
        state.messages.push(entry);
        let excess = state.messages.len().saturating_sub(CHAT_HISTORY);
        state.messages.drain(..excess);
        cx.set_state(state)?;
        Ok(())
    }

    /// Callable `who()`: the connection ids in the room (presence).
    async fn on_call(
        &mut self,
        cx: &mut AgentContext<Self>,
        call: &mut Call,
    ) -> Result<Reply, RpcError> {
        match call.method() {
            "who" => {
                let mut ids: Vec<&str> = cx.connections().map(Connection::id).collect();
                ids.sort_unstable();
                Reply::json(&ids)
            }
            _ => Err(RpcError::NoSuchMethod),
        }
    }
}

/// The token [`PrivateAgent`] expects in `?token=`.
pub const PRIVATE_TOKEN: &str = "let-me-in";

/// `private-agent`: an echo agent that shows auth from the query string.
/// Browsers cannot read an HTTP 401 from a WebSocket handshake (they see
/// 1006 and retry), so a wrong or missing `?token=` is accepted and then
/// closed with 4001 `Unauthorized` — a terminal code: clients stop
/// reconnecting.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrivateAgent;

impl Agent for PrivateAgent {
    type State = serde_json::Value;

    async fn on_connect(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        ctx: &ConnectContext,
    ) -> Result<(), BoxError> {
        if ctx.request().query("token") != Some(PRIVATE_TOKEN) {
            conn.close(4001, "Unauthorized");
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        _cx: &mut AgentContext<Self>,
        conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        echo(conn, message)
    }
}

/// A server with the example agents registered.
pub fn server() -> AgentServer {
    AgentServer::new()
        .agent("EchoAgent", |_| EchoAgent)
        .agent("CounterAgent", |_| CounterAgent)
        .agent("ChatAgent", |_| ChatAgent)
        .agent("PrivateAgent", |_| PrivateAgent)
}
