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
# Without reference types, so the module holds JavaScript values as indices
# into a table the glue keeps (wasm-bindgen's JS heap) instead of in an
# `externref` table: no externref shim around each export, no table
# allocator in the module (0.5 KiB less gzip, JS and wasm together).
# `strip=symbols` drops the `target_features` section, which would say
# reference types are used (the precompiled `core` is built with them) and
# make wasm-bindgen take the externref path.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=-reference-types -C strip=symbols" \
  cargo build --profile wasm-release --target wasm32-unknown-unknown -p agents-client --locked \
  --no-default-features --features standalone
RAW="$ROOT/target/wasm32-unknown-unknown/wasm-release/agents_client.wasm"
rm -rf "$OUT" && mkdir -p "$OUT"
step "wasm-bindgen, wasm-opt -Oz, minify"
# The bundler target's glue (`agents_client_bg.js`: the imports as exported
# functions); src/index.js loads the module itself.
# Multi-value returns (as Rust's default target features have them; the
# stripped module no longer says so): results come back as values instead
# of through a return area in memory.
WASM_BINDGEN_MULTI_VALUE=1 wasm-bindgen --target bundler --remove-name-section \
  --remove-producers-section --out-dir "$OUT" --out-name agents_client "$RAW"
# Also shortens every import and export name (hashed wasm-bindgen names of
# 20-45 characters, in both the wasm and the glue) to one or two letters.
# `--low-memory-unused`: Rust's stack grows down from 1 MiB and the heap
# lies above it, so the first KiB is never touched (lets wasm-opt fold
# constant address offsets into loads and stores).
"$WASM_OPT" -Oz --low-memory-unused --strip-target-features --minify-imports-and-exports-and-modules \
  --enable-reference-types --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue \
  "$OUT/agents_client_bg.wasm" -o "$OUT/agents_client_bg.wasm" >"$OUT/names.json"
node "$ROOT/scripts/minify-wasm-names.mjs" "$OUT/names.json" "$OUT/agents_client_bg.js" \
  "$OUT/agents_client_bg.wasm"
rm "$OUT/names.json"
# One minified ES module: the package entry (src/index.js), the class
# (client-wasm/js/agent-client.js) and the glue. The names the class and
# the glue share (the core's methods, the class's `…_` methods the core
# calls) end in `_` and are shortened too (names of three letters or more:
# wasm-opt's one- and two-letter names, `_` among them, stay as they are).
"$ESBUILD" "$ROOT/packages/client/src/index.js" --bundle --minify --format=esm \
  --target=es2022 --mangle-props='^[a-z][a-zA-Z]+_$' --log-level=warning --outfile="$OUT/index.js"
# The types are packages/client/index.d.ts; the glue is in pkg/index.js.
rm -f "$OUT"/agents_client.js "$OUT"/agents_client_bg.js "$OUT"/*.d.ts
echo "built $OUT"
