#!/usr/bin/env bash
# Benchmarks agents-server, in one run, against the machine's limit (the
# bare Rust WebSocket server in `agents-bench --serve-limit`) and a Node `ws`
# baseline (tests/bench/), on 127.0.0.1: each server on core 0, the load
# tool on core 1. Every round runs each scenario against each server, back
# to back, in a rotating order:
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
dirty=$(git status --porcelain -- server server-cli protocol 2>/dev/null | wc -l)
BUILT="server built from commit $(git rev-parse --short HEAD 2>/dev/null)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) in server/, server-cli/, protocol/" || true)"
echo "$BUILT"
npm_install .
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
ALL="idle,echo,pipelined,broadcast,burst,connect,rpc,neighbour"

# Starts server `label` on core 0; sets PID and PORT.
start_server() { # label log
  local label="$1" log="$2"
  : >"$log" # now, not in the background: the wait below must not read an old log
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

# Which scenarios each server runs, and with what sizes.
scenarios_of() { # label
  case "$1" in
    ours | limit) echo "$ALL" ;;
    ours-disk) echo "rpc,neighbour" ;;
    baseline) echo "idle,echo,pipelined,broadcast,burst,connect" ;;
  esac
}
sizes_of() { # label
  # Node is 15-40x slower on bursts and pipelines: fewer of them, same rates.
  [ "$1" = baseline ] && echo "--bursts 40 --pipeline-messages 4000 --connects 4000"
  true
}

declare -A PIDS PORTS
stop_all() {
  for label in "${!PIDS[@]}"; do
    kill "${PIDS[$label]}" 2>/dev/null || true
    wait "${PIDS[$label]}" 2>/dev/null || true
    unset "PIDS[$label]"
  done
  rm -rf "$OUT/data"
}
trap 'stop_server; stop_all; cleanup_bg' EXIT

# Each round starts the four servers (all on core 0, idle but for the one
# under load) and runs every scenario against each of them back to back, in
# an order that rotates with the round and the scenario: the two figures of
# a ratio are measured seconds apart, so a neighbour's load on this shared
# machine hits both alike more often than not.
SERVERS=(ours limit ours-disk baseline)
for round in $(seq "$ROUNDS"); do
  step "round $round/$ROUNDS"
  for label in "${SERVERS[@]}"; do
    start_server "$label" "$OUT/$label.server.log"
    PIDS[$label]=$PID PORTS[$label]=$PORT
  done
  PID=
  s=0
  for scenario in ${ALL//,/ }; do
    for i in "${!SERVERS[@]}"; do
      label="${SERVERS[$(((i + round + s) % ${#SERVERS[@]}))]}"
      [[ ",$(scenarios_of "$label")," == *",$scenario,"* ]] || continue
      if [ "$label" = ours-disk ] && [ "$scenario" = rpc ]; then
        fsync_probe "$round" | tee -a "$OUT/results.log" | sed 's/^JSON /          fsync probe: /'
      fi
      # shellcheck disable=SC2046
      (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:${PORTS[$label]}" --label "$label" \
        --round "$round" --server-pid "${PIDS[$label]}" --scenario "$scenario" $(sizes_of "$label") \
        ${BENCH_ARGS:-}) | tee -a "$OUT/results.log" | grep -v '^JSON'
    done
    s=$((s + 1))
  done
  stop_all
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
echo "$BUILT"
