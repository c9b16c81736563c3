import { useEffect, useRef, useState } from "react";
import { AgentClient } from "@agents-rs/client";

import {
  connectionKey,
  isProtocolEvent,
  queryKey,
  type ReadyState,
  type UseAgentOptions,
  type UseAgentResult,
} from "./types.js";
import { attemptQuery, DEFAULT_CACHE_TTL, useQueryParams } from "./use-query.js";

function defaultHost(): string {
  return typeof window === "undefined" ? "dummy-domain.com" : window.location.host;
}

interface Slot {
  key: string;
  client: AgentClient;
}

/**
 * Connects a component to an agent instance.
 *
 * - Connects on mount and closes on unmount; React StrictMode's double
 *   mount leaves exactly one open connection.
 * - A new connection only when a connection option changes (agent, name,
 *   host, path, the resolved query, id, basePath, prefix, protocols,
 *   reconnect tuning); changing callbacks never reconnects.
 * - An async `query` suspends the component until it resolves (as
 *   `agents/react`), is cached per `queryDeps` for `cacheTtl`, and runs
 *   again before every reconnect.
 * - `state` and `readyState` are React state: components re-render on change.
 * - `onMessage` gets user messages only: the client marks protocol frames
 *   (`event.isProtocol`), so nothing is parsed twice.
 *
 * @example
 * const agent = useAgent<{ count: number }>({ agent: "counter-agent", name: "room-1" });
 * await agent.call("increment", [1]);
 * agent.state?.count;
 */
export function useAgent<State = unknown>(options: UseAgentOptions<State>): UseAgentResult<State> {
  const host = options.host ?? defaultHost();
  const ttl = options.cacheTtl ?? DEFAULT_CACHE_TTL;
  const cacheKey = queryKey(options, host);
  // Suspends while an async query resolves (before any other hook state is
  // kept, as a suspended render keeps nothing).
  const query = useQueryParams(options.query, cacheKey, ttl);
  const key = connectionKey(options, host, query);

  // Callbacks are read through a ref, so new functions never reconnect.
  const handlers = useRef(options);
  handlers.current = options;

  const [state, setStateValue] = useState<State | undefined>(undefined);
  const [readyState, setReadyState] = useState<ReadyState>(0);

  // The client is created inert (startClosed) during render, once per
  // connection key, and connected by the effect below.
  const slot = useRef<Slot | null>(null);
  if (slot.current === null || slot.current.key !== key) {
    const {
      enabled: _enabled, onMessage: _m, onOpen: _o, onClose: _c, onError: _e,
      queryDeps: _d, cacheTtl: _t, query: _q, ...rest
    } = options;
    const on = handlers.current;
    const client = new AgentClient({
      ...rest,
      host,
      startClosed: true,
      query: typeof options.query === "function"
        ? attemptQuery(query, () => handlers.current.query, cacheKey, ttl)
        : query,
      onStateUpdate: (next: State, source: "server" | "client") => {
        setStateValue(next);
        handlers.current.onStateUpdate?.(next, source);
      },
      onIdentity: (name: string, agent: string) => handlers.current.onIdentity?.(name, agent),
      onStateUpdateError: (error: string) => handlers.current.onStateUpdateError?.(error),
      onConnectionError: (error) => handlers.current.onConnectionError?.(error),
      onMcpUpdate: (mcp: unknown) => handlers.current.onMcpUpdate?.(mcp),
      shouldReconnectOnClose: (event: CloseEvent) =>
        handlers.current.shouldReconnectOnClose?.(event) ?? true,
      // Given only when the caller handles it: without one the client warns.
      ...(on.onIdentityChange && {
        onIdentityChange: (...args: [string, string, string, string]) =>
          handlers.current.onIdentityChange?.(...args),
      }),
    });
    client.addEventListener("open", (e) => {
      setReadyState(client.readyState as ReadyState);
      handlers.current.onOpen?.(e);
    });
    client.addEventListener("close", (e) => {
      setReadyState(client.readyState as ReadyState);
      handlers.current.onClose?.(e as CloseEvent);
    });
    client.addEventListener("error", (e) => handlers.current.onError?.(e));
    client.addEventListener("message", (e) => {
      if (!isProtocolEvent(e as MessageEvent)) handlers.current.onMessage?.(e as MessageEvent);
    });
    slot.current = { key, client };
  }
  const client = slot.current.client;
  const enabled = options.enabled ?? true;
  const startClosed = options.startClosed ?? false;

  useEffect(() => {
    if (!enabled || startClosed) {
      client.close();
      setReadyState(3);
      return;
    }
    // Connect on the next task: StrictMode's mount → unmount → mount in one
    // tick then opens a single socket instead of opening and closing one.
    const timer = setTimeout(() => {
      client.reconnect();
      setReadyState(client.readyState as ReadyState);
    }, 0);
    return () => {
      clearTimeout(timer);
      client.close();
    };
  }, [client, enabled, startClosed]);

  // The client's own `state` and `readyState` getters are always current;
  // the React state above only makes components re-render when they change.
  // (A replaced client is closed; its wasm memory is reclaimed with it by
  // the garbage collector. Freeing eagerly would break StrictMode's effect
  // replay.)
  void state;
  void readyState;
  return client as unknown as UseAgentResult<State>;
}
