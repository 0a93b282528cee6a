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

# Notebook tools for the trace tests (nbformat, nbconvert) next to the image's
# packages, so an exported session can be validated and re-executed locally.
TOOLS="$ROOT/target/test-tools"
WANT="$(cat kernel-images/python/requirements.txt tests/requirements.txt)"
if [ ! -x "$TOOLS/bin/python" ] || [ "$(cat "$TOOLS/.requirements" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check \
    -r kernel-images/python/requirements.txt -r tests/requirements.txt
  printf '%s' "$WANT" > "$TOOLS/.requirements"
fi
export CELLBLOCK_TEST_TOOLS="$TOOLS/bin"

cargo test --locked --workspace -- "$@"
cargo bench --locked --workspace --no-run
echo "cellblock: all tests passed"
