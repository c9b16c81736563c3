// useAgent with the real wasm AgentClient against the real agents-server.
// Every wait is bounded (waitFor's timeout); "nothing else happened" is
// checked after a sentinel round trip, never after a fixed sleep.
import { StrictMode, Suspense, type ReactNode } from "react";
import { act, renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, inject, it, vi } from "vitest";
import { AgentClient, type AgentConnectionError } from "@agents-rs/client";
import { useAgent } from "../src/index.js";
// @ts-expect-error: a plain .mjs helper shared with the other JavaScript suites.
import { AgentsServer } from "../../../tests/agents-server.mjs";

const host = inject("agentsHost");
const WAIT = { timeout: 10_000 };
const unique = (p: string) => `${p}-${Math.random().toString(36).slice(2, 10)}`;

// Observers ask the chat agent who is connected: that is the server's view.
const observers: AgentClient[] = [];
afterEach(() => {
  observers.splice(0).forEach((o) => o.close());
});

async function who(room: string): Promise<string[]> {
  const observer = new AgentClient({ agent: "chat-agent", name: room, host, id: "observer" });
  observers.push(observer);
  await observer.ready;
  const ids = (await observer.call("who", [])) as string[];
  observer.close();
  return ids.filter((id) => id !== "observer");
}

async function eventuallyWho(room: string, expected: string[]) {
  await waitFor(async () => expect((await who(room)).sort()).toEqual([...expected].sort()), { timeout: 10_000 });
}

describe("useAgent", () => {
  it("connects on mount and closes on unmount (the server sees the close)", async () => {
    const room = unique("mount");
    const { result, unmount } = renderHook(() => useAgent({ agent: "chat-agent", name: room, host, id: "alice" }));
    await waitFor(() => expect(result.current.readyState).toBe(1));
    await eventuallyWho(room, ["alice"]);
    unmount();
    await eventuallyWho(room, []);
  });

  it("leaves exactly one connection under StrictMode", async () => {
    const room = unique("strict");
    const wrapper = ({ children }: { children: ReactNode }) => <StrictMode>{children}</StrictMode>;
    const opened: number[] = [];
    const { result, unmount } = renderHook(
      () => useAgent({ agent: "chat-agent", name: room, host, id: "strict", onOpen: () => opened.push(1) }),
      { wrapper },
    );
    await waitFor(() => expect(result.current.readyState).toBe(1));
    // The server's view, after a round trip: one connection, opened once.
    expect(await who(room)).toEqual(["strict"]);
    expect(opened).toHaveLength(1);
    unmount();
    await eventuallyWho(room, []);
  });

  it("moves to the new instance when `name` changes", async () => {
    const [first, second] = [unique("first"), unique("second")];
    const { result, rerender, unmount } = renderHook(
      ({ name }) => useAgent({ agent: "chat-agent", name, host, id: "mover" }),
      { initialProps: { name: first } },
    );
    await waitFor(() => expect(result.current.identified).toBe(true));
    const before = result.current;
    rerender({ name: second });
    await waitFor(() => expect(result.current.name).toBe(second));
    await waitFor(() => expect(result.current.readyState).toBe(1));
    expect(result.current).not.toBe(before);
    await eventuallyWho(first, []);
    await eventuallyWho(second, ["mover"]);
    unmount();
  });

  it("does not reconnect when `onMessage` changes, and calls the latest one", async () => {
    const room = unique("callbacks");
    const got: string[] = [];
    const opens: number[] = [];
    const { result, rerender, unmount } = renderHook(
      ({ tag }) =>
        useAgent({
          agent: "chat-agent",
          name: room,
          host,
          id: "cb",
          onOpen: () => opens.push(1),
          onMessage: (e) => got.push(`${tag}:${e.data}`),
        }),
      { initialProps: { tag: "a" } },
    );
    await waitFor(() => expect(result.current.readyState).toBe(1));
    const client = result.current;
    rerender({ tag: "b" });
    expect(result.current).toBe(client);
    act(() => {
      result.current.send("hello");
    });
    // Protocol frames (identity, state, mcp) never reach onMessage.
    await waitFor(() => expect(got).toEqual(["b:hello"]));
    expect(opens).toHaveLength(1);
    expect(await who(room)).toEqual(["cb"]);
    unmount();
  });

  it("closes with `enabled: false` and reopens the same client with `true`", async () => {
    const room = unique("enabled");
    const { result, rerender, unmount } = renderHook(
      ({ enabled }) => useAgent({ agent: "chat-agent", name: room, host, id: "toggle", enabled }),
      { initialProps: { enabled: true } },
    );
    await waitFor(() => expect(result.current.readyState).toBe(1));
    const client = result.current;
    rerender({ enabled: false });
    await waitFor(() => expect(result.current.readyState).toBe(3));
    await eventuallyWho(room, []);
    rerender({ enabled: true });
    await waitFor(() => expect(result.current.readyState).toBe(1));
    expect(result.current).toBe(client);
    await eventuallyWho(room, ["toggle"]);
    unmount();
  });

  it("re-renders with the agent's state", async () => {
    const room = unique("state");
    const seen: unknown[] = [];
    const { result, unmount } = renderHook(() =>
      useAgent<{ count: number }>({
        agent: "counter-agent",
        name: room,
        host,
        onStateUpdate: (s, source) => seen.push([s, source]),
      }),
    );
    await waitFor(() => expect(result.current.state).toEqual({ count: 0 }));
    let value: unknown;
    await act(async () => {
      value = await result.current.call("increment", [3]);
    });
    expect(value).toBe(3);
    await waitFor(() => expect(result.current.state).toEqual({ count: 3 }));
    act(() => result.current.setState({ count: 10 }));
    expect(result.current.state).toEqual({ count: 10 });
    expect(seen).toContainEqual([{ count: 10 }, "client"]);
    unmount();
  });

  it("keeps protocol frames out of onMessage by the client's mark, and hands MCP frames to onMcpUpdate", async () => {
    const got: unknown[] = [];
    const mcp: unknown[] = [];
    const room = unique("frames");
    const { result, unmount } = renderHook(() =>
      useAgent({
        agent: "echo-agent",
        name: room,
        host,
        onMessage: (e) => got.push(e.data),
        onMcpUpdate: (m) => mcp.push(m),
      }),
    );
    await waitFor(() => expect(mcp).toEqual([{ prompts: [], resources: [], servers: {}, tools: [] }]), WAIT);
    const marked: boolean[] = [];
    result.current.addEventListener("message", (e) => marked.push((e as MessageEvent & { isProtocol: boolean }).isProtocol));
    // echo-agent sends these back: a text shaped like a server's protocol
    // frame is one (marked, filtered); other JSON and text are the user's.
    act(() => {
      result.current.send('{"type":"cf_agent_state_error","error":"echoed"}');
      result.current.send('{"type":"not_a_protocol","x":1}');
      result.current.send("last");
    });
    await waitFor(() => expect(got).toEqual(['{"type":"not_a_protocol","x":1}', "last"]), WAIT);
    expect(marked).toEqual([true, false, false]);
    unmount();
  });

  it("calls onStateUpdateError when the server refuses a state", async () => {
    const errors: string[] = [];
    const room = unique("refused");
    const { result, unmount } = renderHook(() =>
      useAgent({ agent: "chat-agent", name: room, host, onStateUpdateError: (e) => errors.push(e) }),
    );
    await waitFor(() => expect(result.current.identified).toBe(true), WAIT);
    act(() => result.current.setState({ messages: [] }));
    await waitFor(() => expect(errors).toEqual(["State update rejected"]), WAIT);
    unmount();
  });

  it("calls onConnectionError on a terminal close and stops", async () => {
    const errors: AgentConnectionError[] = [];
    const room = unique("denied");
    const { result, unmount } = renderHook(() =>
      useAgent({ agent: "private-agent", name: room, host, onConnectionError: (e) => errors.push(e) }),
    );
    await waitFor(() => expect(errors).toHaveLength(1), WAIT);
    expect(errors[0]).toMatchObject({ name: "AgentConnectionError", code: 4001, reason: "Unauthorized" });
    expect(result.current.connectionError).toBe(errors[0]);
    expect(result.current.shouldReconnect).toBe(false);
    await waitFor(() => expect(result.current.readyState).toBe(3), WAIT);
    unmount();
  });

  it("stops reconnecting when the latest shouldReconnectOnClose says no", async () => {
    const server = new AgentsServer();
    await server.start();
    try {
      const asked: number[] = [];
      const errors: AgentConnectionError[] = [];
      const room = unique("refuse");
      const { result, rerender, unmount } = renderHook(
        ({ again }: { again: boolean }) =>
          useAgent({
            agent: "echo-agent",
            name: room,
            host: server.host,
            minReconnectionDelay: 10,
            maxReconnectionDelay: 50,
            shouldReconnectOnClose: (e) => (asked.push(e.code), again),
            onConnectionError: (e) => errors.push(e),
          }),
        { initialProps: { again: true } },
      );
      await waitFor(() => expect(result.current.readyState).toBe(1), WAIT);
      const client = result.current;
      // The latest render's answer counts (the client is not recreated).
      rerender({ again: false });
      await server.kill();
      await waitFor(() => expect(errors).toHaveLength(1), WAIT);
      expect(asked).toEqual([1006]);
      expect(errors[0]).toMatchObject({ name: "AgentConnectionError", code: 1006 });
      expect(result.current).toBe(client);
      expect(client.shouldReconnect).toBe(false);
      await server.start();
      await new Promise((r) => setTimeout(r, 300));
      expect(client.readyState).toBe(3);
      unmount();
    } finally {
      await server.stop();
    }
  });

  it("calls onIdentityChange when the server names another instance", async () => {
    const changes: string[][] = [];
    const room = unique("identity");
    const { result, unmount } = renderHook(() =>
      useAgent({ agent: "echo-agent", name: room, host, onIdentityChange: (...a) => changes.push(a) }),
    );
    await waitFor(() => expect(result.current.identified).toBe(true), WAIT);
    // echo-agent returns this frame as if the server sent it.
    act(() => {
      result.current.send(JSON.stringify({ type: "cf_agent_identity", name: "elsewhere", agent: "echo-agent" }));
    });
    await waitFor(() => expect(changes).toEqual([[room, "elsewhere", "echo-agent", "echo-agent"]]), WAIT);
    expect(result.current.name).toBe("elsewhere");
    unmount();
  });
});

describe("useAgent with an async query", () => {
  const suspense = ({ children }: { children: ReactNode }) => <Suspense fallback={null}>{children}</Suspense>;

  it("suspends until the query resolves, connects with it, and caches it across mounts", async () => {
    const room = unique("query");
    const query = vi.fn(async () => ({ token: "let-me-in" }));
    const mount = () =>
      renderHook(() => useAgent({ agent: "private-agent", name: room, host, query, queryDeps: ["alice"] }), {
        wrapper: suspense,
      });
    const first = mount();
    expect(first.result.current).toBeNull(); // suspended
    await waitFor(() => expect(first.result.current?.readyState).toBe(1), WAIT);
    expect(first.result.current.url).toContain("&token=let-me-in");
    first.unmount();
    const second = mount();
    expect(second.result.current).not.toBeNull(); // cached: no suspense
    await waitFor(() => expect(second.result.current.readyState).toBe(1), WAIT);
    expect(query).toHaveBeenCalledTimes(1);
    second.unmount();
  });

  it("asks again for new queryDeps or once cacheTtl has passed", async () => {
    const room = unique("deps");
    const query = vi.fn(async () => ({ token: "let-me-in" }));
    const { result, rerender, unmount } = renderHook(
      ({ user }) => useAgent({ agent: "private-agent", name: room, host, query, queryDeps: [user], cacheTtl: 60_000 }),
      { wrapper: suspense, initialProps: { user: "a" } },
    );
    await waitFor(() => expect(result.current?.readyState).toBe(1), WAIT);
    const before = result.current;
    rerender({ user: "b" });
    await waitFor(() => expect(query).toHaveBeenCalledTimes(2), WAIT);
    await waitFor(() => expect(result.current?.readyState).toBe(1), WAIT);
    // Same resolved value, same address: the same connection options, so
    // the client stays.
    expect(result.current).toBe(before);
    unmount();
    // A new mount after the TTL asks again.
    const later = Date.now() + 60_001;
    const now = vi.spyOn(Date, "now").mockImplementation(() => later);
    try {
      const again = renderHook(
        () => useAgent({ agent: "private-agent", name: room, host, query, queryDeps: ["b"], cacheTtl: 60_000 }),
        { wrapper: suspense },
      );
      expect(again.result.current).toBeNull();
      await waitFor(() => expect(query).toHaveBeenCalledTimes(3), WAIT);
      now.mockRestore();
      await waitFor(() => expect(again.result.current?.readyState).toBe(1), WAIT);
      again.unmount();
    } finally {
      now.mockRestore();
    }
  });

  it("runs the query again before every reconnect, without suspending", async () => {
    const server = new AgentsServer();
    await server.start();
    try {
      let tokens = 0;
      const query = vi.fn(async () => ({ token: "let-me-in", n: String(++tokens) }));
      const opens: number[] = [];
      const room = unique("again");
      const { result, unmount } = renderHook(
        () =>
          useAgent({
            agent: "private-agent",
            name: room,
            host: server.host,
            query,
            queryDeps: [server.host],
            minReconnectionDelay: 10,
            maxReconnectionDelay: 50,
            onOpen: () => opens.push(1),
          }),
        { wrapper: suspense },
      );
      await waitFor(() => expect(result.current?.readyState).toBe(1), WAIT);
      expect(result.current.url).toContain("n=1");
      const client = result.current;
      await server.kill();
      await waitFor(() => expect(client.readyState).toBe(3), WAIT);
      await server.start();
      await waitFor(() => expect(opens.length).toBeGreaterThanOrEqual(2), WAIT);
      await waitFor(() => expect(client.readyState).toBe(1), WAIT);
      // Every attempt (failed ones while the server was down included) ran
      // the query; the open socket carries the latest answer.
      expect(query.mock.calls.length).toBeGreaterThanOrEqual(opens.length);
      expect(client.url).toContain(`n=${query.mock.calls.length}`);
      expect(result.current).toBe(client); // never suspended, same client
      unmount();
    } finally {
      await server.stop();
    }
  });
});
