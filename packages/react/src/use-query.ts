import { useRef } from "react";

/** The query parameters of a connection. */
export type QueryParams = Record<string, string | number | boolean | null | undefined>;

/** A `query` option: fixed parameters, or a (sync or async) function. */
export type Query = QueryParams | (() => QueryParams | Promise<QueryParams>);

interface Entry {
  promise: Promise<void>;
  settled: boolean;
  value?: QueryParams;
  error?: unknown;
  /** When a new render (a new mount, other `queryDeps`) must ask again. */
  expires: number;
}

/**
 * Resolved `query` functions by `[agent, name, host, basePath, path,
 * ...queryDeps]`, shared by every component of the page (as `agents/react`'s
 * cache): a remount or a second component with the same key reuses the
 * value until `cacheTtl` has passed.
 */
const cache = new Map<string, Entry>();

/** The default `cacheTtl`: five minutes, as `agents/react`. */
export const DEFAULT_CACHE_TTL = 5 * 60 * 1000;

function load(query: () => QueryParams | Promise<QueryParams>, ttl: number): Entry {
  const entry: Entry = { settled: false, expires: Infinity, promise: Promise.resolve() };
  entry.promise = new Promise<QueryParams>((ok) => ok(query())).then(
    (value) => {
      Object.assign(entry, { settled: true, value, expires: Date.now() + ttl });
    },
    (error: unknown) => {
      // A failure is not cached: the next render asks again.
      Object.assign(entry, { settled: true, error, expires: 0 });
    },
  );
  return entry;
}

/** Stores a fresh value (a later connection attempt asked again). */
function refresh(key: string, value: QueryParams, ttl: number) {
  const entry: Entry = { settled: true, value, expires: Date.now() + ttl, promise: Promise.resolve() };
  cache.set(key, entry);
}

/**
 * The query parameters for this render. A function is resolved once per
 * cache key and suspends the component meanwhile (it needs a `<Suspense>`
 * boundary, as with `agents/react`); its failure goes to the nearest error
 * boundary. A mounted component keeps the value it resolved while the key
 * stays: its client runs the function again before every later connection
 * attempt anyway (see {@link attemptQuery}), without a new connection.
 */
export function useQueryParams(
  query: Query | undefined,
  key: string,
  ttl: number,
): QueryParams | undefined {
  // What this component resolved for `key`: its connection keeps using it
  // (later attempts ask again on their own, without a new connection).
  const held = useRef<{ key: string; value: QueryParams | undefined } | null>(null);
  if (typeof query !== "function") return query;
  if (held.current?.key === key) return held.current.value;
  let entry = cache.get(key);
  if (entry && entry.settled && Date.now() >= entry.expires) {
    cache.delete(key);
    entry = undefined;
  }
  if (!entry) {
    entry = load(query, ttl);
    cache.set(key, entry);
  }
  if (!entry.settled) throw entry.promise;
  if (entry.error !== undefined) {
    cache.delete(key);
    throw entry.error;
  }
  held.current = { key, value: entry.value };
  return entry.value;
}

/**
 * The `query` function the client runs before each connection attempt: the
 * first attempt uses the value this render resolved, every later one asks
 * `latest()` (the newest props' `query`) again and caches the answer, so a
 * reconnect always carries fresh parameters (e.g. a renewed token).
 */
export function attemptQuery(
  first: QueryParams | undefined,
  latest: () => Query | undefined,
  key: string,
  ttl: number,
): () => Promise<QueryParams> {
  let used = false;
  return async () => {
    const query = latest();
    if (!used || typeof query !== "function") {
      used = true;
      return first ?? {};
    }
    const value = await query();
    refresh(key, value, ttl);
    return value;
  };
}
