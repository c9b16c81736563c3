#!/usr/bin/env bash
# Sets up (idempotently) and runs the demo: agents-server with the example
# agents on 127.0.0.1 (PORT, default 8787). Stop it with Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
step "build agents-server (release)"
cargo build --release --locked -p agents-server
PORT="${PORT:-8787}"
echo
echo "  Agents at ws://127.0.0.1:$PORT/agents/<agent>/<name>"
echo "    echo-agent, counter-agent, chat-agent"
echo
exec ./target/release/agents-server --host 127.0.0.1 --port "$PORT"
