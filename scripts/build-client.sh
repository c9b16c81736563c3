#!/usr/bin/env bash
# Builds packages/client/pkg: the size-optimised wasm AgentClient and its
# minified JavaScript glue, then prints their sizes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need_rust
need_node
need_wasm_tools
OUT="$ROOT/packages/client/pkg"
step "cargo build --profile wasm-release (agents-client)"
cargo build --profile wasm-release --target wasm32-unknown-unknown -p agents-client --locked
RAW="$ROOT/target/wasm32-unknown-unknown/wasm-release/agents_client.wasm"
rm -rf "$OUT" && mkdir -p "$OUT"
step "wasm-bindgen, wasm-opt -Oz, minify"
wasm-bindgen --target web --remove-name-section --remove-producers-section \
  --out-dir "$OUT" --out-name agents_client "$RAW"
"$WASM_OPT" -Oz --enable-reference-types --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue \
  "$OUT/agents_client_bg.wasm" -o "$OUT/agents_client_bg.wasm"
"$ESBUILD" "$OUT/agents_client.js" --minify --format=esm --log-level=warning --outfile="$OUT/agents_client.min.js"
mv "$OUT/agents_client.min.js" "$OUT/agents_client.js"
rm -f "$OUT/agents_client_bg.wasm.d.ts"
echo "built $OUT"
