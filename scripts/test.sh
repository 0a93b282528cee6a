#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy, unit tests, and end-to-end
# tests against the built binary with a real ipykernel. Installs what it needs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all --check
cargo build --locked --workspace --all-targets
cargo clippy --locked --workspace --all-targets -- -D warnings

export CELLBLOCK_BIN="$ROOT/target/debug/cellblock"
export CELLBLOCK_IMAGES_DIR="$ROOT/target/cellblock-images"
# Build the kernel image once (a no-op when it is current); tests share it.
IMAGE_DIR="$("$CELLBLOCK_BIN" image path python --images-dir "$CELLBLOCK_IMAGES_DIR" | tail -n 1)"
export CELLBLOCK_TEST_PYTHON="$IMAGE_DIR/venv/bin/python"

cargo test --locked --workspace -- "$@"
cargo bench --locked --workspace --no-run
echo "cellblock: all tests passed"
