// The `AgentClient` class of @agents-rs/client: a real `EventTarget` that
// owns the WebSocket, the timers and the listeners, and decides nothing.
// Every decision (URL, options, backoff and jitter, the send queue,
// identity and state, calls and their timeouts, frame sorting, network and
// visibility) is made by the Rust core (client-wasm/src/machine.rs), which
// this class feeds with events and which answers by calling the `…_`
// methods below (client-wasm/src/bindings.rs). The npm build bundles this
// file with the wasm-bindgen glue and shortens every `…_` name.

// What the core is told (`on_`) and asked (`do_`), and its getters (`get_`):
// the numbers of client-wasm/src/bindings.rs
// (first in the file, so that esbuild inlines them).
const START = 0, OPENED = 1, MESSAGE = 2, CLOSED = 3, ERRORED = 4, TIMER = 5;
const NETWORK = 6, VISIBLE = 7, QUERIED = 8, QUERY_FAILED = 9, CLOSED_FOR_GOOD = 10;
const TIMED_OUT_FOR_GOOD = 11;
const CONNECT_TIMER = 1; // client-wasm/src/machine.rs, `CONNECT`
const SEND = 0, CALL = 1, SET_STATE = 2, CLOSE = 3, RECONNECT = 4;
const READY_STATE = 0, QUEUED = 1, RETRY_COUNT = 2, SHOULD_RECONNECT = 3;

let makeCore;
/** Sets how a client makes its core (`(options, host) => new Core(options, host)`). */
export function useCore(factory) {
  makeCore = factory;
}

/** `onConnectionError`'s argument and `connectionError`: why reconnecting stopped. */
export class AgentConnectionError extends Error {
  constructor(code, reason, wasClean) {
    super(`Agent connection closed: ${reason || `WebSocket closed with code ${code}`}`);
    this.name = "AgentConnectionError";
    this.code = code;
    this.reason = reason;
    this.wasClean = wasClean;
  }
}

/**
 * A `message` event; `isProtocol` marks the frames the client acted on.
 *
 * A `MessageEvent` to its users (`instanceof MessageEvent`, and `data`,
 * `origin`, `lastEventId`, `source`, `ports` are those of the socket's own
 * event), but made as a plain `Event`: Chromium spends 3-5 us making a
 * `MessageEvent` from script (its init dictionary and `data` slot), about
 * four times a plain event's cost and more than the core's own work on a
 * message. So the class extends `Event`, its prototype inherits
 * `MessageEvent.prototype`, and every accessor `MessageEvent.prototype` has
 * is shadowed by one that reads the socket's event.
 */
class AgentMessageEvent extends Event {
  #e; // the WebSocket's own `message` event
  constructor(socketEvent) {
    super("message");
    this.#e = socketEvent;
  }
  get isProtocol() {
    return false;
  }
  static {
    // The standard fields always (some environments, happy-dom among them,
    // make them instance fields, not accessors), and any other accessor
    // of this realm's `MessageEvent` that `Event` does not have.
    const names = new Set(["data", "origin", "lastEventId", "source", "ports"]);
    const proto = globalThis.MessageEvent?.prototype;
    if (proto && Event.prototype.isPrototypeOf(proto)) {
      Object.setPrototypeOf(this.prototype, proto);
      for (const [key, d] of Object.entries(Object.getOwnPropertyDescriptors(proto))) {
        if (d.get && !(key in Event.prototype)) names.add(key);
      }
    }
    for (const key of names) {
      Object.defineProperty(this.prototype, key, { get() { return this.#e[key]; }, configurable: true });
    }
  }
}
class ProtocolMessageEvent extends AgentMessageEvent {
  get isProtocol() {
    return true;
  }
}

// `client.stub.increment(2)` is `client.call("increment", [2])`. Keys that
// `await`, loggers and test matchers probe answer `undefined`, as the
// reference's, so they never fire calls.
const NOT_METHODS = new Set([
  "toJSON", "then", "catch", "finally", "valueOf", "toString", "constructor",
  "prototype", "$$typeof", "@@toStringTag", "asymmetricMatch", "nodeType",
]);
const STATES = ["CONNECTING", "OPEN", "CLOSING", "CLOSED"];
// The clients that want network and visibility changes (the core says when).
const watching = new Set();

export class AgentClient extends EventTarget {
  #c; // the core
  #o; // the options, for the callbacks and `query`
  #ws = null;
  #timers = new Map();
  #binaryType = "blob";
  #ready;
  #resolve;
  #stub;
  // Whether a "message" listener was ever added: until then, with no
  // `onmessage` either, nobody can see a message event, so none is made
  // (making one costs more than the core's own work on a stream chunk).
  #heard = false;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  state = undefined;
  identified = false;
  connectionError = null;
  agent = "";
  name = "";
  id = "";

  static {
    STATES.forEach((name, value) => {
      Object.defineProperty(this, name, { value });
      Object.defineProperty(this.prototype, name, { value });
    });
    const tell = (kind, value) => () => watching.forEach((c) => c.#c.on_(c, kind, 0, value()));
    globalThis.addEventListener?.("online", tell(NETWORK, () => true));
    globalThis.addEventListener?.("offline", tell(NETWORK, () => false));
    globalThis.document?.addEventListener("visibilitychange", tell(VISIBLE, () => !document.hidden));
  }

  /** Creates the client and starts connecting (unless `startClosed`). Throws on bad options. */
  constructor(options) {
    super();
    this.#o = options;
    this.unready_();
    this.#c = makeCore(options, globalThis.location?.host);
    this.#c.on_(this, START, 0, globalThis.navigator?.onLine !== false);
  }

  get readyState() {
    return this.#c.get_(READY_STATE, this.#ws?.readyState ?? -1);
  }
  get bufferedAmount() {
    return this.#c.get_(QUEUED, 0) + (this.#ws?.bufferedAmount ?? 0);
  }
  get retryCount() {
    return this.#c.get_(RETRY_COUNT, 0);
  }
  get shouldReconnect() {
    return this.#c.get_(SHOULD_RECONNECT, 0) > 0;
  }
  get ready() {
    return this.#ready;
  }
  get url() {
    return this.#ws?.url ?? "";
  }
  get protocol() {
    return this.#ws?.protocol ?? "";
  }
  get extensions() {
    return this.#ws?.extensions ?? "";
  }
  get binaryType() {
    return this.#binaryType;
  }
  set binaryType(type) {
    this.#binaryType = type;
    if (this.#ws) this.#ws.binaryType = type;
  }
  get stub() {
    return (this.#stub ??= new Proxy({}, {
      get: (_, method) =>
        typeof method === "string" && !NOT_METHODS.has(method)
          ? (...args) => this.call(method, args)
          : undefined,
    }));
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type == "message") this.#heard = true;
  }

  send(data) {
    return this.#c.do_(this, SEND, data);
  }
  close(code, reason) {
    this.#c.do_(this, CLOSE, code, reason);
  }
  reconnect(code, reason) {
    this.#c.do_(this, RECONNECT, code, reason);
  }
  call(method, args, options) {
    return new Promise((resolve, reject) => this.#c.do_(this, CALL, method, args, options, { resolve, reject }));
  }
  setState(state) {
    this.#c.do_(this, SET_STATE, state);
  }
  /** Closes and releases the WebAssembly memory now (else the garbage collector does); the client is unusable after. */
  free() {
    if (!this.#c) return;
    this.close();
    this.#c.free();
    this.#c = null;
  }

  // What the core asks for (client-wasm/src/bindings.rs, `Host`).
  init_(id, agent, name) {
    this.id = id;
    this.agent = agent;
    this.name = name;
  }
  query_(gen) {
    new Promise((ok) => ok(this.#o.query())).then(
      (value) => this.#c.on_(this, QUERIED, gen, value),
      (error) => this.#c.on_(this, QUERY_FAILED, gen, error),
    );
  }
  open_(gen, url, protocols) {
    const ws = (this.#ws = new WebSocket(url, protocols));
    const c = this.#c;
    ws.binaryType = this.#binaryType;
    ws.onopen = () => c.on_(this, OPENED, gen);
    ws.onmessage = (e) => {
      const data = e.data;
      const kind = c.on_(this, MESSAGE, gen, data);
      if (kind && (this.#heard || this.onmessage)) {
        // Protocol frames reach listeners too, marked, so filters need no JSON.parse.
        this.#emit(new (kind > 1 ? ProtocolMessageEvent : AgentMessageEvent)(e), this.onmessage);
      }
    };
    ws.onclose = (e) => {
      const again = this.#again(e);
      this.#c?.on_(this, again ? CLOSED : CLOSED_FOR_GOOD, gen, e);
    };
    ws.onerror = () => c.on_(this, ERRORED, gen);
  }
  write_(data) {
    this.#ws.send(data);
  }
  shut_(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    ws.close(code, reason);
  }
  emit_(kind, code, reason, wasClean) {
    const type = ["open", "close", "error"][kind];
    const event = kind == 1 ? new CloseEvent(type, { code, reason, wasClean }) : new Event(type);
    this.#emit(event, this["on" + type]);
  }
  // Whether the user's `shouldReconnectOnClose` lets reconnecting go on
  // after `event` (the core ANDs it with its own rules). If it throws,
  // reconnecting goes on, and the error reaches the page.
  #again(event) {
    try {
      return !!(this.#o.shouldReconnectOnClose?.(event) ?? true);
    } catch (error) {
      queueMicrotask(() => {
        throw error;
      });
      return true;
    }
  }
  #emit(event, handler) {
    handler?.call(this, event);
    this.dispatchEvent(event);
  }
  timer_(id, ms) {
    clearTimeout(this.#timers.get(id));
    this.#timers.delete(id);
    if (ms >= 0) {
      this.#timers.set(id, setTimeout(() => {
        this.#timers.delete(id);
        // A connection timeout is a close for the user's predicate too (the
        // reference's synthetic one).
        const again = id != CONNECT_TIMER || !this.#o.shouldReconnectOnClose ||
          this.#again(new CloseEvent("close", { code: 1000, reason: "timeout" }));
        this.#c?.on_(this, again ? TIMER : TIMED_OUT_FOR_GOOD, id);
      }, ms));
    }
  }
  watch_(on) {
    on ? watching.add(this) : watching.delete(this);
  }
  state_(state, source) {
    this.state = state;
    this.#o.onStateUpdate?.(state, source);
  }
  identity_(name, agent) {
    this.name = name;
    this.agent = agent;
    this.identified = true;
    this.#resolve();
    this.#o.onIdentity?.(name, agent);
  }
  unready_() {
    this.identified = false;
    this.#ready = new Promise((resolve) => (this.#resolve = resolve));
  }
  callback_(name, a, b, c, d) {
    if (name) this.#o[name]?.(a, b, c, d);
    else console.warn(`agents-rs: identity changed on reconnect, from ${c}/${a} to ${d}/${b} (pass onIdentityChange to handle it)`);
  }
  connectionError_(code, reason, wasClean) {
    const error = (this.connectionError = code ? new AgentConnectionError(code, reason, wasClean) : null);
    if (error) this.#o.onConnectionError?.(error);
  }
  warn_(text, detail) {
    console.warn(text, detail ?? "");
  }
  settle_(promise, stream, kind, value) {
    if (kind == 1) {
      stream?.onChunk?.(value);
    } else if (kind) {
      promise.reject(new Error(value));
      stream?.onError?.(value);
    } else {
      promise.resolve(value);
      stream?.onDone?.(value);
    }
  }
}

if (Symbol.dispose) AgentClient.prototype[Symbol.dispose] = AgentClient.prototype.free;
