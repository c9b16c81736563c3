#!/usr/bin/env bash
# Sets up (idempotently) and runs every test of the workspace.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
need_node
need_browser
need_wasm_tools
need_nats

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p agents-server-cli --features cluster-tests --all-targets --locked -- -D warnings
cargo clippy -p agents-client --target wasm32-unknown-unknown --all-targets --locked -- -D warnings
cargo clippy -p agents-client --target wasm32-unknown-unknown --locked \
  --no-default-features --features standalone -- -D warnings # as the npm package is built
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -q -p agents-protocol -p agents-server -p agents-server-cli

step "build"
cargo build --workspace --all-targets --locked

LOG="$ROOT/target/test-logs"
mkdir -p "$LOG"
step "rust tests (protocol golden frames, server integration)"
# agents-client runs on its own: unit tests, the core (tests/machine.rs) and its agreement
# with the protocol crate (tests/frames.rs); tests/browser*.rs run in Chromium below.
cargo test --workspace --exclude agents-client --locked 2>&1 | tee "$LOG/cargo.log"
cargo test -p agents-client --lib --test machine --test frames --locked 2>&1 | tee "$LOG/cargo-client.log"

step "browser tests: the wasm AgentClient in headless Chromium against agents-server"
start_supervisor "$LOG/supervisor.out"
export WASM_BINDGEN_TEST_TIMEOUT=180
cargo test -p agents-client --target wasm32-unknown-unknown --test browser --test browser_no_server --locked --features small-alloc 2>&1 | tee "$LOG/browser.log"
kill "$SUPERVISOR_PID"; wait "$SUPERVISOR_PID" 2>/dev/null || true

step "negative check: every browser test that needs the server fails without one"
# client-wasm/tests/browser.rs holds only tests that need the server (those
# that do not are in browser_no_server.rs): each must fail, none may be
# skipped, and a compile error or a runner that never starts is no pass.
expected=$(grep -c '^#\[wasm_bindgen_test\]' client-wasm/tests/browser.rs)
if cargo test -p agents-client --target wasm32-unknown-unknown --test browser --locked --features small-alloc >"$LOG/negative.out" 2>&1; then
  echo "ERROR: the browser tests passed without a server" >&2
  exit 1
fi
if ! grep -qE "^test result: FAILED\. 0 passed; $expected failed; 0 ignored" "$LOG/negative.out"; then
  tail -n 30 "$LOG/negative.out" >&2
  echo "ERROR: expected exactly $expected browser tests to fail without a server (see $LOG/negative.out)" >&2
  exit 1
fi
echo "ok: all $expected browser tests that need the server failed without it, as they must"

step "build @agents-rs/client, @agents-rs/react and the example app"
"$ROOT/scripts/build-client.sh" >"$LOG/build-client.out" 2>&1 || { cat "$LOG/build-client.out"; exit 1; }
"$ROOT/scripts/size.sh" | grep -v '^{' # @agents-rs/client's gzip size; fails above the budget
npm_install .
npm run --workspace @agents-rs/react build
npm run --workspace agents-rs-react-app build

step "useAgent hook tests (vitest + jsdom, real wasm client, real server)"
AGENTS_SERVER_BIN="$ROOT/target/debug/agents-server" NO_COLOR=1 \
  npm run --workspace @agents-rs/react test 2>&1 | tee "$LOG/react.log"

step "end-to-end in headless Chromium (playwright-core): examples/plain-js and examples/react-app"
AGENTS_SERVER_BIN="$ROOT/target/debug/agents-server" npm --prefix tests/browser test 2>&1 | tee "$LOG/e2e.log"

step "compatibility: the real agents npm AgentClient against agents-server"
AGENTS_SERVER_BIN="$ROOT/target/debug/agents-server" npm --prefix tests/compat test 2>&1 | tee "$LOG/compat.log"

step "cluster mode: nats-server $NATS_SERVER_VERSION, agents-server --nats nodes (the compat suite against a non-owner too)"
cargo test -p agents-server-cli --features cluster-tests --test cluster --locked 2>&1 | tee "$LOG/cluster.log"

step "cluster mode again, every forwarded frame through NATS (nodes without --direct-addr)"
AGENTS_TEST_FRAMES=nats cargo test -p agents-server-cli --features cluster-tests --test cluster --locked 2>&1 | tee "$LOG/cluster-nats.log"

step "done"
summarize "$LOG"/*.log
