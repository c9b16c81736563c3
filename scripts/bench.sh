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
#
# Comparisons: two servers only, the same scenarios against both in every
# round (order alternating), ratios per round and their median; no client
# steps. Results go to target/bench/compare-<mode>/.
#   BENCH_COMPARE=metrics ./scripts/bench.sh
#       ours (no --admin-addr: no metrics recorder) vs ours-admin
#       (--admin-addr, its /metrics scraped once a second during the load):
#       echo, broadcast (issue #16's target: within 3 %), rpc, connect.
#   BENCH_OTHER_REV=c82ba69^ [BENCH_OTHER_LABEL=before-cluster] ./scripts/bench.sh
#       ours vs agents-server built from that commit (a git worktree and
#       target dir under target/bench/rev/), both in memory: idle, echo,
#       pipelined, broadcast, burst, connect, rpc; and both with --data-dir
#       (ours-disk vs <label>-disk): rpc, BENCH_DISK_SCENARIOS to change
#       (empty: none). Issue #13's target: within 5 %.
#   BENCH_OTHER_BIN=/path/to/agents-server BENCH_OTHER_LABEL=name ./scripts/bench.sh
#       the same against a binary built elsewhere.
#   BENCH_SCENARIOS=echo,rpc    other scenarios for a comparison
#   BENCH_REV=HEAD              "ours" built from a commit (in a worktree
#                               under target/bench/rev/), not the work tree
#   BENCH_PROFILE=connect,rpc   perf profiles of both servers after the rounds
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
need_node
need_wasm_tools
ROUNDS="${ROUNDS:-3}"
COMPARE="${BENCH_COMPARE:-}"
[ -n "${BENCH_OTHER_BIN:-}${BENCH_OTHER_REV:-}" ] && COMPARE=other
OTHER_LABEL=
DISK_SCENARIOS=
case "$COMPARE" in
  "") OUT="$ROOT/target/bench" ;;
  metrics | other) OUT="$ROOT/target/bench/compare-$COMPARE" ;;
  *)
    echo "BENCH_COMPARE=$COMPARE: expected metrics (or BENCH_OTHER_BIN / BENCH_OTHER_REV)" >&2
    exit 1
    ;;
esac
mkdir -p "$OUT"
: >"$OUT/results.log"
ulimit -n "$(ulimit -Hn)" # 10,000 idle connections need file descriptors
# Builds agents-server as of commit $1 in git worktree target/bench/rev/$2
# (kept for the next run, checked out anew when the commit changes; one
# target dir for both worktrees: a first build takes minutes); sets REV_BIN
# and REV_SHORT.
build_rev() { # rev worktree-name
  local sha tree
  sha=$(git rev-parse --verify "$1^{commit}")
  REV_SHORT=$(git rev-parse --short "$sha")
  tree="$ROOT/target/bench/rev/$2"
  step "build agents-server at $REV_SHORT ($1, release)"
  if [ -e "$tree/.git" ]; then
    git -C "$tree" checkout --quiet --force --detach "$sha"
  else
    git worktree prune
    git worktree add --detach "$tree" "$sha"
  fi
  # --bin rather than -p: the package that holds the binary changed names.
  (cd "$tree" && CARGO_TARGET_DIR="$ROOT/target/bench/rev/target" cargo build --release --locked --bin agents-server)
  REV_BIN="$ROOT/target/bench/rev/agents-server-$REV_SHORT"
  cp "$ROOT/target/bench/rev/target/release/agents-server" "$REV_BIN"
}

step "build (release)"
if [ -n "${BENCH_REV:-}" ]; then
  cargo build --release --locked -p agents-bench
else
  cargo build --release --locked -p agents-server-cli -p agents-bench
fi
# BENCH_REV: "ours" built from a commit rather than from the work tree
# (which other engineers' uncommitted edits may be in).
OURS_BIN="$ROOT/target/release/agents-server"
if [ -n "${BENCH_REV:-}" ]; then
  build_rev "$BENCH_REV" ours
  OURS_BIN="$REV_BIN"
  BUILT="ours: agents-server built from commit $REV_SHORT ($BENCH_REV) in a clean worktree"
else
  dirty=$(git status --porcelain -- server server-cli protocol 2>/dev/null | wc -l)
  BUILT="server built from commit $(git rev-parse --short HEAD 2>/dev/null)$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s) in server/, server-cli/, protocol/" || true)"
fi
echo "$BUILT"

# The other server of a comparison with another binary.
if [ "$COMPARE" = other ]; then
  if [ -n "${BENCH_OTHER_REV:-}" ]; then
    build_rev "$BENCH_OTHER_REV" other
    OTHER_BIN="$REV_BIN"
    OTHER_LABEL="${BENCH_OTHER_LABEL:-at-$REV_SHORT}"
    OTHER_BUILT="$OTHER_LABEL: agents-server built from commit $REV_SHORT ($BENCH_OTHER_REV) in a clean worktree"
  else
    OTHER_BIN="$(realpath "$BENCH_OTHER_BIN")"
    [ -x "$OTHER_BIN" ] || { echo "BENCH_OTHER_BIN=$BENCH_OTHER_BIN is not an executable" >&2; exit 1; }
    OTHER_LABEL="${BENCH_OTHER_LABEL:-other}"
    OTHER_BUILT="$OTHER_LABEL: $OTHER_BIN ($(stat -c %y "$OTHER_BIN" | cut -d. -f1))"
  fi
  case "$OTHER_LABEL" in
    ours | ours-disk | ours-admin | limit | baseline | *[!a-z0-9-]*)
      echo "BENCH_OTHER_LABEL=$OTHER_LABEL: pick another name (lowercase, digits, dashes)" >&2
      exit 1
      ;;
  esac
  echo "$OTHER_BUILT"
fi
[ -z "$COMPARE" ] && npm_install .
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
case "$COMPARE" in
  "") ALL="idle,echo,pipelined,broadcast,burst,connect,rpc,neighbour" ;;
  metrics) ALL="${BENCH_SCENARIOS:-echo,broadcast,rpc,connect}" ;;
  other) ALL="${BENCH_SCENARIOS:-idle,echo,pipelined,broadcast,burst,connect,rpc}" ;;
esac

# Starts server `label` on core 0; sets PID, PORT and ADMIN_PORT (its
# admin listener's, for ours-admin).
start_server() { # label log
  local label="$1" log="$2"
  : >"$log" # now, not in the background: the wait below must not read an old log
  case "$label" in
    ours) (pin 0 "$OURS_BIN" --port 0 --in-memory --log warn) >"$log" 2>&1 & ;;
    ours-admin)
      (pin 0 "$OURS_BIN" --port 0 --in-memory --log warn --admin-addr 127.0.0.1:0) >"$log" 2>&1 & ;;
    "$OTHER_LABEL") (pin 0 "$OTHER_BIN" --port 0 --in-memory --log warn) >"$log" 2>&1 & ;;
    "$OTHER_LABEL-disk")
      rm -rf "$OUT/data-other"
      (pin 0 "$OTHER_BIN" --port 0 --data-dir "$OUT/data-other" --log warn) >"$log" 2>&1 & ;;
    ours-disk)
      rm -rf "$OUT/data"
      (pin 0 "$OURS_BIN" --port 0 --data-dir "$OUT/data" --log warn) >"$log" 2>&1 & ;;
    limit) (pin 0 ./target/release/agents-bench --serve-limit --port 0) >"$log" 2>&1 & ;;
    baseline) (pin 0 node tests/bench/baseline.mjs 0) >"$log" 2>&1 & ;;
  esac
  PID=$!
  local ready=listening
  [ "$label" = ours-admin ] && ready="admin on"
  for _ in $(seq 300); do grep -q "$ready" "$log" && break; sleep 0.1; done
  PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
  ADMIN_PORT=$(sed -n 's/.*admin on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
  [ -n "$PORT" ] || { echo "$label did not start:" >&2; cat "$log" >&2; exit 1; }
  if [ "$label" = ours-admin ] && [ -z "$ADMIN_PORT" ]; then
    echo "$label started without its admin listener:" >&2
    cat "$log" >&2
    exit 1
  fi
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
fsync_probe() { # round label
  dd if=/dev/zero of="$OUT/fsync.probe" bs=4k count=200 oflag=dsync 2>&1 |
    awk -v round="$1" -v label="$2" '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "JSON {\"bench\":\"fsync-4k\",\"label\":\"%s\",\"round\":%d,\"ms_per_write\":%.3f}\n", label, round, $(i - 1) * 1000 / 200 }'
  rm -f "$OUT/fsync.probe"
}

# Which scenarios each server runs, and with what sizes.
scenarios_of() { # label
  if [ -n "$COMPARE" ]; then
    case "$1" in
      ours-disk | "$OTHER_LABEL-disk") echo "$DISK_SCENARIOS" ;;
      *) echo "$ALL" ;;
    esac
    return
  fi
  case "$1" in
    ours | limit) echo "$ALL" ;;
    ours-disk) echo "rpc,neighbour" ;;
    baseline) echo "idle,echo,pipelined,broadcast,burst,connect" ;;
  esac
}
# Arguments of agents-bench for server `label` before BENCH_ARGS: sizes,
# and for ours-admin a scrape of its /metrics once a second (as Prometheus
# would) while the load runs, so that rendering the metrics is paid for too.
args_of() { # label admin_port
  # Node is 15-40x slower on bursts and pipelines: fewer of them, same rates.
  [ "$1" = baseline ] && echo "--bursts 40 --pipeline-messages 4000 --connects 4000"
  [ "$1" = ours-admin ] && echo "--scrape http://127.0.0.1:$2/metrics --scrape-every 1"
  true
}

declare -A PIDS PORTS ADMINS
stop_all() {
  for label in "${!PIDS[@]}"; do
    kill "${PIDS[$label]}" 2>/dev/null || true
    wait "${PIDS[$label]}" 2>/dev/null || true
    unset "PIDS[$label]"
  done
  rm -rf "$OUT/data" "$OUT/data-other"
}
trap 'stop_server; stop_all; cleanup_bg' EXIT

# Each round starts the four servers (all on core 0, idle but for the one
# under load) and runs every scenario against each of them back to back, in
# an order that rotates with the round and the scenario: the two figures of
# a ratio are measured seconds apart, so a neighbour's load on this shared
# machine hits both alike more often than not.
case "$COMPARE" in
  "") SERVERS=(ours limit ours-disk baseline) ;;
  metrics) SERVERS=(ours ours-admin) ;;
  other)
    SERVERS=(ours "$OTHER_LABEL")
    DISK_SCENARIOS="${BENCH_DISK_SCENARIOS-rpc}"
    [ -n "$DISK_SCENARIOS" ] && SERVERS+=(ours-disk "$OTHER_LABEL-disk")
    ;;
esac
: >"$OUT/loadavg.log"
for round in $(seq "$ROUNDS"); do
  step "round $round/$ROUNDS"
  cut -d' ' -f1-3 /proc/loadavg | tee -a "$OUT/loadavg.log" | sed 's/^/load average: /'
  for label in "${SERVERS[@]}"; do
    start_server "$label" "$OUT/$label.server.log"
    PIDS[$label]=$PID PORTS[$label]=$PORT ADMINS[$label]=$ADMIN_PORT
  done
  PID=
  s=0
  for scenario in $(echo "${ALL//,/ } ${DISK_SCENARIOS//,/ }" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    for i in "${!SERVERS[@]}"; do
      label="${SERVERS[$(((i + round + s) % ${#SERVERS[@]}))]}"
      [[ ",$(scenarios_of "$label")," == *",$scenario,"* ]] || continue
      if [[ "$label" == *-disk ]] && [ "$scenario" = rpc ]; then
        fsync_probe "$round" "$label" | tee -a "$OUT/results.log" | sed 's/^JSON /          fsync probe: /'
      fi
      # shellcheck disable=SC2046
      (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:${PORTS[$label]}" --label "$label" \
        --round "$round" --server-pid "${PIDS[$label]}" --scenario "$scenario" \
        $(args_of "$label" "${ADMINS[$label]}") ${BENCH_ARGS:-}) | tee -a "$OUT/results.log" | grep -v '^JSON'
    done
    s=$((s + 1))
  done
  stop_all
done

if [ -z "$COMPARE" ]; then
  step "client size"
  "$ROOT/scripts/size.sh" | tee -a "$OUT/results.log" | grep -v '^{' || true

  step "client throughput in headless Chromium: AgentClient vs the reference agents client and a native WebSocket"
  need_browser
  # The server on core 0, Node and Chromium (its processes inherit) on core 1.
  printf '#!/bin/sh\nexec taskset -c 0 %s "$@"\n' "$OURS_BIN" >"$OUT/server-core0.sh"
  chmod +x "$OUT/server-core0.sh"
  server_bin="$OURS_BIN"
  command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && server_bin="$OUT/server-core0.sh"
  (AGENTS_SERVER_BIN="$server_bin" pin 1 node tests/browser/bench-client.mjs 9) 2>&1 |
    tee -a "$OUT/results.log" | grep -v '^JSON'
fi

step "profiles: where the server's CPU goes (perf, when available)"
# One server at a time under `perf record` while the load tool runs one
# scenario; flat profiles (no call graphs), split into kernel and user space.
profile() { # name label scenario
  local name="$1"
  start_server "$2" "$OUT/profile-$name.server.log"
  perf record -q -F 1999 -p "$PID" -o "$OUT/perf-$name.data" >/dev/null 2>&1 &
  local perfpid=$!
  sleep 0.3
  # shellcheck disable=SC2046
  (pin 1 ./target/release/agents-bench --url "ws://127.0.0.1:$PORT" --label "$2" --scenario "$3" \
    --server-pid "$PID" $(args_of "$2" "$ADMIN_PORT") ${BENCH_ARGS:-}) | grep -v '^JSON'
  kill -INT "$perfpid" 2>/dev/null || true
  wait "$perfpid" 2>/dev/null || true
  stop_server
  rm -rf "$OUT/data" "$OUT/data-other"
  {
    echo "## $name: $2, scenario $3"
    echo "### by thread and object (kernel vs user space)"
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort comm,dso --stdio 2>/dev/null | sed -n '1,10p'
    echo "### by symbol"
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort dso,sym --percent-limit 0.7 --stdio 2>/dev/null | sed -n '1,45p'
    # What the metrics cost where they are recorded: the metrics crates
    # (recorder, registry, exporter) and the server's own metrics module.
    echo "### samples in metrics code (symbols matching metrics|prometheus)"
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort sym --stdio 2>/dev/null |
      awk '/metrics|prometheus/ { gsub("%", "", $1); s += $1; n++ } END { printf "%.2f %% of the server'"'"'s samples, in %d symbols\n", s, n }'
    perf report -q -i "$OUT/perf-$name.data" --no-children --sort sym --stdio 2>/dev/null |
      awk '/metrics|prometheus/ && n++ < 12'
  } >"$OUT/profile-$name.txt"
  sed -n '1,30p' "$OUT/profile-$name.txt"
  sed -n '/^### samples in metrics code/,$p' "$OUT/profile-$name.txt"
}
if ! command -v perf >/dev/null || ! perf stat -e task-clock true >/dev/null 2>&1; then
  echo "perf not available; skipped"
elif [ -z "$COMPARE" ]; then
  profile rpc-ours ours rpc
  profile rpc-ours-disk ours-disk rpc
  profile rpc-limit limit rpc
  profile neighbour-ours-disk ours-disk neighbour
else
  profiles="${BENCH_PROFILE:-}"
  for scenario in ${profiles//,/ }; do
    for label in "${SERVERS[@]}"; do
      [[ ",$(scenarios_of "$label")," == *",$scenario,"* ]] && profile "$scenario-$label" "$label" "$scenario"
    done
  done
fi

step "summary"
case "$COMPARE" in
  "") report_args=() ;;
  # Issue #16: metrics cost under 3 % on echo and broadcast.
  metrics) report_args=(--compare ours-admin,ours --tolerance 0.03 --targets echo-shared,echo-per-conn,broadcast-200,broadcast-1000) ;;
  # Issue #13: a single node within 5 % of its figures before cluster mode.
  other)
    report_args=(--compare "ours,$OTHER_LABEL" --tolerance 0.05)
    [ -n "$DISK_SCENARIOS" ] && report_args+=(--compare "ours-disk,$OTHER_LABEL-disk")
    ;;
esac
node tests/bench/report.mjs "${report_args[@]}" <"$OUT/results.log" | tee "$OUT/summary.md" | grep -v '^MEDIAN'
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(stat -f -c %T "$OUT") under target/bench" | tee -a "$OUT/summary.md"
echo "load average at the start of each round (1, 5, 15 min): $(paste -sd ';' "$OUT/loadavg.log" | sed 's/;/; /g')" | tee -a "$OUT/summary.md"
echo "$BUILT" | tee -a "$OUT/summary.md"
[ -n "$OTHER_LABEL" ] && echo "$OTHER_BUILT" | tee -a "$OUT/summary.md"
true
