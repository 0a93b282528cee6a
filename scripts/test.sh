#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy, unit tests, and end-to-end
# tests against the built binary with a real ipykernel. Installs what it needs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
# Node.js runs the @jupyterlab/services client test.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "cellblock: installing nodejs npm from the package registry" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
fi
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' 2>/dev/null && command -v npm >/dev/null 2>&1 \
  || { echo "cellblock: the tests need Node.js 18 or newer with npm (node, npm on PATH); install them and retry" >&2; exit 1; }

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all --check
cargo build --locked --workspace --all-targets
cargo clippy --locked --workspace --all-targets -- -D warnings

export CELLBLOCK_BIN="$ROOT/target/debug/cellblock"
export CELLBLOCK_IMAGES_DIR="$ROOT/target/cellblock-images"
# Build the kernel image once (a no-op when it is current); tests share it.
IMAGE_DIR="$("$CELLBLOCK_BIN" image path python --images-dir "$CELLBLOCK_IMAGES_DIR" | tail -n 1)"
export CELLBLOCK_TEST_PYTHON="$IMAGE_DIR/venv/bin/python"

# Notebook tools for the trace tests (nbformat, nbconvert) next to the image's
# packages, so an exported session can be validated and re-executed locally.
make_venv "$ROOT/target/test-tools" kernel-images/python/requirements.txt tests/requirements.txt
export CELLBLOCK_TEST_TOOLS="$ROOT/target/test-tools/bin"

# The real @jupyterlab/services client (with ws) from tests/node's lockfile;
# the JupyterLab test runs its script from this directory.
NODE_DIR="$ROOT/target/test-node"
WANT="$(cat tests/node/package.json tests/node/package-lock.json)"
if [ ! -d "$NODE_DIR/node_modules" ] || [ "$(cat "$NODE_DIR/.lockfile" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp tests/node/package.json tests/node/package-lock.json "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s' "$WANT" > "$NODE_DIR/.lockfile"
fi
export CELLBLOCK_TEST_NODE="$NODE_DIR"

cargo test --locked --workspace -- "$@"
# The core, isolation and files tests run above with kernels forked from
# the zygote; again with every sandbox from a warm pool, and again with every
# kernel spawned (--no-zygote, the zygote's fallback).
CELLBLOCK_TEST_POOL_SIZE=2 cargo test --locked -p cellblock-tests \
  --test execute --test isolation --test files -- "$@"
CELLBLOCK_TEST_ZYGOTE=off cargo test --locked -p cellblock-tests \
  --test execute --test isolation --test files -- "$@"
cargo bench --locked --workspace --no-run
echo "cellblock: all tests passed"
