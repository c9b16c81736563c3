#!/usr/bin/env bash
# Sets up (idempotently) and runs the demo: the example React app (chat room
# + shared counter) served by agents-server on http://127.0.0.1:$PORT
# (default 8787), with the example agents and their state kept in ./data.
# Stop it with Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
need_node
need_wasm_tools
step "build agents-server (release)"
cargo build --release --locked -p agents-server-cli
step "build the wasm client, the React hook and the example app"
"$ROOT/scripts/build-client.sh"
npm_install .
npm run --workspace @agents-rs/react build
npm run --workspace agents-rs-react-app build
PORT="${PORT:-8787}"
echo
echo "  Open http://127.0.0.1:$PORT/  (add ?room=<name> for another room; open two tabs)"
echo "  Agents: ws://127.0.0.1:$PORT/agents/{echo-agent,counter-agent,chat-agent,private-agent}/<name>"
echo
exec ./target/release/agents-server --host 127.0.0.1 --port "$PORT" \
  --static-dir examples/react-app/dist --data-dir "${DATA_DIR:-data}"
