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
