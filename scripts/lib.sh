# Shared by scripts/serve.sh and scripts/test.sh: make sure the machine has
# what cellblock needs (a C toolchain for Rust's linker, python3 with venv and
# pip), installing from Debian/Ubuntu packages when run as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if ! command -v python3 >/dev/null 2>&1; then
  need_pkgs+=(python3 python3-venv python3-pip)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_pkgs+=(python3-venv python3-pip)
fi
if ((${#need_pkgs[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "cellblock: installing ${need_pkgs[*]} from the package registry" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "cellblock: missing ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]}) and retry" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "cellblock: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

# make_venv DIR REQUIREMENTS...: a venv in DIR with the pinned requirement
# files installed, re-created only when their text changes.
make_venv() {
  local dir="$1"
  shift
  local want
  want="$(cat "$@")"
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.requirements" 2>/dev/null)" != "$want" ]; then
    echo "cellblock: installing $* into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "${@/#/-r}" >&2
    printf '%s' "$want" > "$dir/.requirements"
  fi
}
