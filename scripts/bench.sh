#!/usr/bin/env bash
# Benchmarks agents-server against a Node `ws` baseline (tests/bench/), in
# one run, alternating, on 127.0.0.1: the server on core 0, the load tool on
# core 1. Prints the medians of ROUNDS runs and our/baseline ratios, plus the
# client's size and its in-browser throughput. Results go to target/bench/.
#   ROUNDS=3 ./scripts/bench.sh        BENCH_ARGS="--idle 2000" to shrink
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
need_node
need_wasm_tools
ROUNDS="${ROUNDS:-3}"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
: >"$OUT/results.log"
ulimit -n "$(ulimit -Hn)" # 10,000 idle connections need file descriptors
step "build (release)"
cargo build --release --locked -p agents-server-cli -p agents-bench
npm_install .
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }

run_one() { # label
  local label="$1" log="$OUT/$1.server.log" pid port
  if [ "$label" = ours ]; then
    (pin 0 ./target/release/agents-server --port 0 --in-memory --log warn) >"$log" 2>&1 &
  else
    (pin 0 node tests/bench/baseline.mjs 0) >"$log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
  port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
  local scenarios="echo,broadcast,connect,idle,rpc"
  [ "$label" = baseline ] && scenarios="echo,broadcast,connect,idle"
  (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:$port" --label "$label" \
    --server-pid "$pid" --scenario "$scenarios" ${BENCH_ARGS:-}) | tee -a "$OUT/results.log" | grep -v '^JSON'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  step "round $round/$ROUNDS: agents-server"
  run_one ours
  step "round $round/$ROUNDS: Node ws baseline"
  run_one baseline
done

step "client size"
"$ROOT/scripts/size.sh" | tee -a "$OUT/results.log" | grep -v '^{' || true

step "client throughput in headless Chromium: AgentClient vs native WebSocket"
need_browser
# The server on core 0, Node and Chromium (its processes inherit) on core 1.
printf '#!/bin/sh\nexec taskset -c 0 %s "$@"\n' "$ROOT/target/release/agents-server" >"$OUT/server-core0.sh"
chmod +x "$OUT/server-core0.sh"
server_bin="$ROOT/target/release/agents-server"
command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && server_bin="$OUT/server-core0.sh"
(AGENTS_SERVER_BIN="$server_bin" pin 1 node tests/browser/bench-client.mjs 9) 2>&1 |
  tee -a "$OUT/results.log" | grep -v '^JSON'

step "profile: where agents-server spends its time (perf, when available)"
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
  (pin 0 ./target/release/agents-server --port 0 --in-memory --log warn) >"$OUT/perf.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$OUT/perf.server.log" && break; sleep 0.1; done
  port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/perf.server.log")
  perf record -q -g -p "$pid" -o "$OUT/perf.data" -- sleep 8 >/dev/null 2>&1 &
  perfpid=$!
  (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:$port" --scenario echo,broadcast --messages 1000 --broadcasts 100) >/dev/null
  wait "$perfpid" || true
  perf report -q -i "$OUT/perf.data" --no-children -g none --percent-limit 1.5 --sort dso,sym --stdio \
    >"$OUT/profile.txt" 2>/dev/null || true
  sed -n '1,30p' "$OUT/profile.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
else
  echo "perf not available; skipped"
fi

step "summary"
node tests/bench/report.mjs <"$OUT/results.log" | tee "$OUT/summary.md" | grep -v '^MEDIAN'
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
