//! The example agents the `agents-server` binary serves. `EchoAgent` and
//! `CounterAgent` behave like the reference's `reference-agents.ts`.

use serde::{Deserialize, Serialize};

use crate::{Agent, AgentContext, BoxError, Connection, Message};

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
        conn.send(message)?;
        Ok(())
    }
}

/// The state of [`CounterAgent`]: `{"count":0}` to start.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    /// The counter.
    pub count: i64,
}

/// `counter-agent`: state `{"count":0}`; the text `broadcast:<x>` sends
/// `<x>` to every connection.
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
}

/// `chat-agent`: a chat room that broadcasts each text message to every
/// connection, the sender included.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChatAgent;

impl Agent for ChatAgent {
    type State = serde_json::Value;

    async fn on_message(
        &mut self,
        cx: &mut AgentContext<Self>,
        _conn: &Connection,
        message: Message,
    ) -> Result<(), BoxError> {
        if let Message::Text(_) = message {
            cx.broadcast(message, &[]);
        }
        Ok(())
    }
}

/// A server with the three example agents registered.
pub fn server() -> crate::AgentServer {
    crate::AgentServer::new()
        .agent("EchoAgent", |_| EchoAgent)
        .agent("CounterAgent", |_| CounterAgent)
        .agent("ChatAgent", |_| ChatAgent)
}
