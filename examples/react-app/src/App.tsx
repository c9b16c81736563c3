import { useEffect, useRef, useState, type FormEvent } from "react";
import { useAgent, type UseAgentResult } from "@agents-rs/react";

interface ChatMessage {
  from: string;
  text: string;
  at: number;
}
interface ChatState {
  messages: ChatMessage[];
}
interface CounterState {
  count: number;
}

type Status = "connecting" | "open" | "reconnecting" | "closed";

/** connecting → open → reconnecting (after a drop) → open … or closed for good. */
function useStatus(agent: UseAgentResult<unknown>): Status {
  const wasOpen = useRef(false);
  if (agent.readyState === 1) {
    wasOpen.current = true;
    return "open";
  }
  if (agent.readyState === 3 && !agent.shouldReconnect) return "closed";
  return wasOpen.current ? "reconnecting" : "connecting";
}

function StatusBadge({ status, label }: { status: Status; label: string }) {
  return (
    <span className={`badge badge-${status}`} data-testid={`${label}-status`}>
      <span className="dot" /> {status}
    </span>
  );
}

const params = new URLSearchParams(location.search);
const room = params.get("room") ?? "lobby";
function initialUser(): string {
  const fromUrl = params.get("user");
  if (fromUrl) return fromUrl;
  const saved = localStorage.getItem("agents-rs-user");
  if (saved) return saved;
  const fresh = `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  localStorage.setItem("agents-rs-user", fresh);
  return fresh;
}

function Chat({ user }: { user: string }) {
  const chat = useAgent<ChatState>({ agent: "chat-agent", name: room, id: user });
  const status = useStatus(chat);
  const [draft, setDraft] = useState("");
  const list = useRef<HTMLOListElement>(null);
  const messages = chat.state?.messages ?? [];

  useEffect(() => {
    list.current?.scrollTo({ top: list.current.scrollHeight });
  }, [messages.length]);

  function send(e: FormEvent) {
    e.preventDefault();
    const text = draft.trim();
    if (!text) return;
    // Queued while disconnected and delivered, in order, on reconnect.
    chat.send(text);
    setDraft("");
  }

  return (
    <section className="card chat">
      <header>
        <h2>Chat · <span className="room">{room}</span></h2>
        <StatusBadge status={status} label="chat" />
      </header>
      <ol className="messages" ref={list} data-testid="messages">
        {messages.length === 0 && <li className="empty">No messages yet. Say hi!</li>}
        {messages.map((m, i) => (
          <li key={`${m.at}-${i}`} className={m.from === user ? "mine" : ""}>
            <span className="from">{m.from}</span>
            <span className="text">{m.text}</span>
            <time>{new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}</time>
          </li>
        ))}
      </ol>
      <form onSubmit={send}>
        <input
          data-testid="chat-input"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
          placeholder={status === "open" ? `Message as ${user}` : "Offline — messages will be sent on reconnect"}
          maxLength={4096}
        />
        <button type="submit" data-testid="chat-send" disabled={!draft.trim()}>
          Send
        </button>
      </form>
    </section>
  );
}

function Counter() {
  const counter = useAgent<CounterState>({ agent: "counter-agent", name: room });
  const status = useStatus(counter);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function increment(by: number) {
    setBusy(true);
    setError(null);
    try {
      await counter.call("increment", [by]);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="card counter">
      <header>
        <h2>Shared counter</h2>
        <StatusBadge status={status} label="counter" />
      </header>
      <p className="count" data-testid="count">
        {counter.state?.count ?? "…"}
      </p>
      <div className="buttons">
        <button data-testid="decrement" onClick={() => increment(-1)} disabled={busy || status !== "open"}>
          −1
        </button>
        <button data-testid="increment" onClick={() => increment(1)} disabled={busy || status !== "open"}>
          +1
        </button>
        <button onClick={() => increment(10)} disabled={busy || status !== "open"}>
          +10
        </button>
      </div>
      <p className="hint">
        <code>increment</code> runs on the agent over RPC; the new count reaches every open tab.
      </p>
      {error && <p className="error">{error}</p>}
    </section>
  );
}

export function App() {
  const [user] = useState(initialUser);
  return (
    <main>
      <header className="top">
        <h1>
          agents<span>-rs</span>
        </h1>
        <p>
          Room <strong>{room}</strong> · you are <strong data-testid="user">{user}</strong> · open this page in
          another tab to see it sync.
        </p>
      </header>
      <div className="grid">
        <Chat user={user} />
        <Counter />
      </div>
      <footer>
        Rust agents over WebSockets, a WebAssembly client, and <code>useAgent</code>.
      </footer>
    </main>
  );
}
