import type { AgentClient, AgentClientOptions } from "@agents-rs/client";
/** `readyState` values, as `WebSocket`'s. */
export type ReadyState = 0 | 1 | 2 | 3;
/** Options of {@link useAgent}: every `AgentClient` option plus the callbacks and `enabled`. */
export interface UseAgentOptions<State = unknown> extends Omit<AgentClientOptions, "host" | "onStateUpdate" | "onIdentity"> {
    /** `host[:port]` of the server. @default window.location.host ("dummy-domain.com" without a window, e.g. SSR) */
    host?: string;
    /** `false` closes the connection, `true` reopens the same client. @default true */
    enabled?: boolean;
    /** A message that is not a protocol frame (protocol frames are filtered out, as in `agents/react`). */
    onMessage?: (event: MessageEvent) => void;
    /** The socket opened (after queued messages were flushed). */
    onOpen?: (event: Event) => void;
    /** The socket closed; `code`, `reason` and `wasClean` are the real ones. */
    onClose?: (event: CloseEvent) => void;
    /** A socket error (e.g. the server is unreachable). */
    onError?: (event: Event) => void;
    /** The state changed on the server (`"server"`) or through `setState` (`"client"`). */
    onStateUpdate?: (state: State, source: "server" | "client") => void;
    /** The server's identity arrived. */
    onIdentity?: (name: string, agent: string) => void;
}
/**
 * What {@link useAgent} returns: the client itself. Its `state` and
 * `readyState` are always current, and the hook re-renders the component
 * whenever they change.
 */
export type UseAgentResult<State = unknown> = AgentClient<State>;
/** The `type`s `agents/react` treats as protocol frames and keeps out of `onMessage`. */
export declare const PROTOCOL_TYPES: ReadonlySet<string>;
/** Whether a message event's data is a protocol frame. */
export declare function isProtocolMessage(data: unknown): boolean;
/**
 * The options whose change means a new connection (a new client); all
 * others (callbacks, `enabled`) are read from the latest render.
 */
export declare function connectionKey(options: UseAgentOptions<any>, host: string): string;
