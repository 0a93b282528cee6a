#!/usr/bin/env bash
# Makes the venv the gateway bench runs Jupyter Kernel Gateway and its
# websocket client from: the kernel image's packages, the test tools and
# tests/bench-requirements.txt, in target/bench-tools. Re-created only when
# those requirement files change. Prints the venv's bin dir (last line).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
make_venv "$ROOT/target/bench-tools" kernel-images/python/requirements.txt \
  tests/requirements.txt tests/bench-requirements.txt
echo "$ROOT/target/bench-tools/bin"
