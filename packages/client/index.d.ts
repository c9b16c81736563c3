// Types of @agents-rs/client. The class is implemented in Rust
// (client-wasm/src/js.rs); these declarations mirror `agents/client`'s
// `AgentClient` so code written for it type-checks unchanged.
import type {
  AgentClientOptions,
  AgentConnectionError,
  CallOptions,
  StreamCallbacks,
} from "./pkg/agents_client.js";

export type { AgentClientOptions, AgentConnectionError, CallOptions, StreamCallbacks };

/** Events an {@link AgentClient} dispatches. */
export interface AgentClientEventMap {
  open: Event;
  message: MessageEvent;
  close: CloseEvent;
  error: Event;
}

/**
 * A reconnecting WebSocket to one agent instance, wire-compatible with
 * `agents/client`'s `AgentClient`: buffers sends while disconnected (flushed
 * in order before `open`), reconnects with backoff plus jitter, stops on
 * close codes 1008 and 4000–4999, and speaks the agents protocol (identity,
 * state, RPC).
 *
 * @example
 * const connection = new AgentClient({ agent: "dialogue-agent", name: "insight-seeker" });
 * connection.addEventListener("message", (event) => console.log("Received:", event.data));
 * connection.send(JSON.stringify({ type: "inquiry", content: "What patterns do you see?" }));
 */
export declare class AgentClient<State = any> {
  /** Creates the client and starts connecting (unless `startClosed`). Throws on bad options. */
  constructor(options: AgentClientOptions);

  addEventListener<K extends keyof AgentClientEventMap>(
    type: K,
    listener: (this: AgentClient<State>, event: AgentClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof AgentClientEventMap>(
    type: K,
    listener: (this: AgentClient<State>, event: AgentClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
  dispatchEvent(event: Event): boolean;

  /** Called on `open` (before listeners). */
  onopen: ((event: Event) => void) | null;
  /** Called on every message, protocol frames included (before listeners). */
  onmessage: ((event: MessageEvent) => void) | null;
  /** Called on `close` with the real `code`, `reason` and `wasClean`. */
  onclose: ((event: CloseEvent) => void) | null;
  /** Called on `error`. */
  onerror: ((event: Event) => void) | null;

  /**
   * Sends now when open, else queues (up to `maxEnqueuedMessages`) and flushes
   * in order before `open`. Returns whether it went out now. Throws when the
   * queue is full.
   */
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;
  /** Closes and stops reconnecting; pending calls reject with `Connection closed`. @default code 1000 */
  close(code?: number, reason?: string): void;
  /** Reconnects now, also after `close()` or a terminal close. */
  reconnect(code?: number, reason?: string): void;
  /**
   * Calls a callable method. Rejects with the server's error, on timeout
   * (`defaultCallTimeout`, 30 s; none for streaming calls), or when the socket
   * it was sent on closes.
   */
  call<T = any>(method: string, args?: unknown[], options?: CallOptions): Promise<T>;
  /** `client.stub.increment(2)` is `client.call("increment", [2])`. */
  readonly stub: Record<string, (...args: unknown[]) => Promise<any>>;
  /** Sends `cf_agent_state` and updates `state` at once (optimistically). */
  setState(state: State): void;

  /** The agent's state (from the server or `setState`); `undefined` before any. */
  readonly state: State | undefined;
  /** Resolves once the server's identity (and the state that follows it) arrived on this socket. */
  readonly ready: Promise<void>;
  /** Whether the identity arrived on the current socket. */
  readonly identified: boolean;
  /** The agent's kebab-case name (the server's, once identified). */
  readonly agent: string;
  /** The instance name (the server's, once identified). */
  readonly name: string;
  /** The `_pk` connection id, kept across reconnects. */
  readonly id: string;
  /** The live socket's URL, or `""`. */
  readonly url: string;
  /** The live socket's subprotocol, or `""`. */
  readonly protocol: string;
  /** 0 connecting, 1 open, 2 closing, 3 closed (also between attempts). */
  readonly readyState: 0 | 1 | 2 | 3;
  /** Bytes queued while disconnected (UTF-16 units for strings) plus the socket's buffer. */
  readonly bufferedAmount: number;
  /** Retries since the last stable connection. */
  readonly retryCount: number;
  /** Whether automatic reconnection is on. */
  readonly shouldReconnect: boolean;
  /** Why reconnecting stopped (terminal close or exhausted retries), else `null`. */
  readonly connectionError: AgentConnectionError | null;
  /** `"blob"` (default) or `"arraybuffer"`; kept across reconnects. */
  binaryType: BinaryType;

  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** Closes and releases the WebAssembly memory now (else a FinalizationRegistry does). */
  free(): void;
  [Symbol.dispose](): void;
}
