#!/usr/bin/env bash
# Runs the benchmarks on a release build: the whole suite (tests/benches/
# suite.rs, about 5 minutes) by default, or the benches named as arguments
# (suite streaming files replay gateway). Tables on stdout, JSON in
# target/bench/<name>.json. Installs what it needs, like scripts/test.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
# cellblock-isolation too: its shared library (next to the binary) is what
# the zygote's children build their sandbox with.
cargo build --release --locked -p cellblock -p cellblock-isolation
make_venv "$ROOT/target/test-tools" kernel-images/python/requirements.txt tests/requirements.txt
export CELLBLOCK_BIN="$ROOT/target/release/cellblock"
export CELLBLOCK_TEST_TOOLS="$ROOT/target/test-tools/bin"
for bench in "${@:-suite}"; do
  cargo bench --locked -p cellblock-tests --bench "$bench"
done
