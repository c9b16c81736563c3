// useAgent with the real wasm AgentClient against the real agents-server.
import { StrictMode, type ReactNode } from "react";
import { act, renderHook, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, inject, it } from "vitest";
import { AgentClient } from "@agents-rs/client";
import { useAgent } from "../src/index.js";

const host = inject("agentsHost");
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
    await new Promise((r) => setTimeout(r, 200));
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
});
