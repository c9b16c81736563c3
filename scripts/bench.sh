#!/usr/bin/env bash
# Benchmarks agents-server, in one run, against the machine's limit (the
# bare Rust WebSocket server in `agents-bench --serve-limit`) and a Node `ws`
# baseline (tests/bench/), on 127.0.0.1: each server on core 0, the load
# tool on core 1. Every round runs each server once, in a rotating order:
#   ours       agents-server --in-memory          (every scenario)
#   ours-disk  agents-server --data-dir (synchronous=FULL, output gate)
#                                                 (rpc, neighbour)
#   limit      agents-bench --serve-limit         (every scenario)
#   baseline   Node ws                            (no rpc, no neighbour)
# Prints medians of ROUNDS runs, ratios (median of per-round ratios), the
# targets of issues #11/#12, the client's size and its in-browser
# throughput, and perf profiles of the server. Results go to target/bench/.
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
ALL="idle,echo,pipelined,broadcast,burst,connect,rpc,neighbour"

# Starts server `label` on core 0; sets PID and PORT.
start_server() { # label log
  local label="$1" log="$2"
  case "$label" in
    ours) (pin 0 ./target/release/agents-server --port 0 --in-memory --log warn) >"$log" 2>&1 & ;;
    ours-disk)
      rm -rf "$OUT/data"
      (pin 0 ./target/release/agents-server --port 0 --data-dir "$OUT/data" --log warn) >"$log" 2>&1 & ;;
    limit) (pin 0 ./target/release/agents-bench --serve-limit --port 0) >"$log" 2>&1 & ;;
    baseline) (pin 0 node tests/bench/baseline.mjs 0) >"$log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 300); do grep -q listening "$log" && break; sleep 0.1; done
  PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
  [ -n "$PORT" ] || { echo "$label did not start:" >&2; cat "$log" >&2; exit 1; }
}

stop_server() {
  if [ -n "${PID:-}" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
  fi
}

# What a durable commit waits for where --data-dir lives (other I/O on
# the machine moves it a lot): 200 synchronous 4 KiB writes, as a figure.
fsync_probe() { # round
  dd if=/dev/zero of="$OUT/fsync.probe" bs=4k count=200 oflag=dsync 2>&1 |
    awk -v round="$1" '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "JSON {\"bench\":\"fsync-4k\",\"label\":\"ours-disk\",\"round\":%d,\"ms_per_write\":%.3f}\n", round, $(i - 1) * 1000 / 200 }'
  rm -f "$OUT/fsync.probe"
}

run_one() { # label round
  local label="$1" scenarios="$ALL" sizes=""
  case "$label" in
    ours-disk) scenarios="rpc,neighbour" ;;
    # Node is 15-40x slower on bursts and pipelines: fewer of them, same rates.
    baseline) scenarios="idle,echo,pipelined,broadcast,burst,connect"
      sizes="--bursts 40 --pipeline-messages 4000 --connects 4000" ;;
  esac
  [ "$label" = ours-disk ] && fsync_probe "$2" | tee -a "$OUT/results.log"
  start_server "$label" "$OUT/$label.server.log"
  (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:$PORT" --label "$label" --round "$2" \
    --server-pid "$PID" --scenario "$scenarios" $sizes ${BENCH_ARGS:-}) | tee -a "$OUT/results.log" | grep -v '^JSON'
  stop_server
  rm -rf "$OUT/data"
}
trap 'stop_server; cleanup_bg' EXIT

SERVERS=(ours limit ours-disk baseline)
for round in $(seq "$ROUNDS"); do
  for i in "${!SERVERS[@]}"; do
    label="${SERVERS[$(((i + round - 1) % ${#SERVERS[@]}))]}"
    step "round $round/$ROUNDS: $label"
    run_one "$label" "$round"
  done
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

step "profiles: where the server's CPU goes (perf, when available)"
# One server at a time under `perf record` while the load tool runs one
# scenario; flat profiles (no call graphs), split into kernel and user space.
profile() { # name label scenario
  local name="$1"
  start_server "$2" "$OUT/profile-$name.server.log"
  perf record -q -F 1999 -p "$PID" -o "$OUT/perf-$name.data" >/dev/null 2>&1 &
  local perfpid=$!
  sleep 0.3
  (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:$PORT" --label "$2" --scenario "$3" \
    --server-pid "$PID" ${BENCH_ARGS:-}) | grep -v '^JSON'
  kill -INT "$perfpid" 2>/dev/null || true
  wait "$perfpid" 2>/dev/null || true
  stop_server
  rm -rf "$OUT/data"
  {
    echo "## $name: $2, scenario $3"
    echo "### by thread and object (kernel vs user space)"
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort comm,dso --stdio 2>/dev/null | sed -n '1,10p'
    echo "### by symbol"
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort dso,sym --percent-limit 0.7 --stdio 2>/dev/null | sed -n '1,45p'
  } >"$OUT/profile-$name.txt"
  sed -n '1,30p' "$OUT/profile-$name.txt"
}
if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
  profile rpc-ours ours rpc
  profile rpc-ours-disk ours-disk rpc
  profile rpc-limit limit rpc
  profile neighbour-ours-disk ours-disk neighbour
else
  echo "perf not available; skipped"
fi

step "summary"
node tests/bench/report.mjs <"$OUT/results.log" | tee "$OUT/summary.md" | grep -v '^MEDIAN'
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(stat -f -c %T "$OUT") under target/bench"
dirty=$(git status --porcelain -- server server-cli protocol 2>/dev/null | wc -l)
echo "server: commit $(git rev-parse --short HEAD 2>/dev/null)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) in server/, server-cli/, protocol/")"
