#!/usr/bin/env bash
# Makes the venv the gateway bench runs Jupyter Kernel Gateway and its
# websocket client from: the kernel image's packages, the test tools and
# tests/bench-requirements.txt, in target/bench-tools. Re-created only when
# those requirement files change. Prints the venv's bin dir (last line).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

REQS=(kernel-images/python/requirements.txt tests/requirements.txt tests/bench-requirements.txt)
TOOLS="$ROOT/target/bench-tools"
WANT="$(cat "${REQS[@]}")"
if [ ! -x "$TOOLS/bin/python" ] || [ ! -x "$TOOLS/bin/jupyter-kernelgateway" ] \
  || [ "$(cat "$TOOLS/.requirements" 2>/dev/null)" != "$WANT" ]; then
  echo "cellblock: installing the bench tools into $TOOLS" >&2
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${REQS[@]/#/-r}" >&2
  printf '%s' "$WANT" > "$TOOLS/.requirements"
fi
echo "$TOOLS/bin"
