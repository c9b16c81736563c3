#!/usr/bin/env bash
# Prints the published size of @agents-rs/client (JS glue + wasm, raw and
# gzip -9) and fails when it is over the budget.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
BUDGET=$((22 * 1024)) # bytes, gzip: agents/client minified is 21.5 KiB
"$ROOT/scripts/build-client.sh" >/dev/null
PKG="$ROOT/packages/client"
total=0
printf '%-34s %10s %10s\n' file raw gzip
for f in pkg/index.js pkg/agents_client_bg.wasm; do
  raw=$(stat -c%s "$PKG/$f")
  gz=$(gzip -9c "$PKG/$f" | wc -c)
  total=$((total + gz))
  printf '%-34s %10d %10d\n' "$f" "$raw" "$gz"
done
printf '%-34s %10s %10d (budget %d)\n' total "" "$total" "$BUDGET"
echo "{\"bench\":\"client-size\",\"gzip_bytes\":$total,\"budget_bytes\":$BUDGET}"
if [ "$total" -gt "$BUDGET" ]; then
  echo "over budget by $((total - BUDGET)) bytes" >&2
  exit 1
fi
