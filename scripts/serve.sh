#!/usr/bin/env bash
# Runs cellblock: builds the release binary, builds the python kernel image on
# first use (pinned packages from PyPI), and serves on 127.0.0.1:8080.
# Extra arguments go to `cellblock serve` (e.g. --listen, --api-key).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
# cellblock-isolation too: its shared library (next to the binary) is what
# the zygote's children build their sandbox with.
cargo build --release --locked -p cellblock -p cellblock-isolation
exec "$ROOT/target/release/cellblock" serve --data-dir "${CELLBLOCK_DATA_DIR:-$ROOT/data}" "$@"
