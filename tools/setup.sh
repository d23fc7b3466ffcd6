#!/usr/bin/env bash
# Prepares this checkout to build and run: Bazel (Debian's bazel-bootstrap and
# the offline repositories it needs) and the pinned Python venv. Quick no-op
# when everything is in place; safe to re-run.
#
#   tools/setup.sh          CPU environment (.venv from requirements.txt)
#   tools/setup.sh --cuda   also the CUDA environment (.venv-cuda from
#                           requirements-cuda.txt), for --config=cuda
#   PYTHON=3.13 tools/setup.sh   the venv on that interpreter (a command, a
#                           path or a pyenv version); re-made if it differs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "[setup] $*" >&2; }
die() { echo "[setup] error: $*" >&2; exit 1; }

install_bazel() {
  local sudo="" version
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v bazel >/dev/null || [ ! -d /usr/src/bazel-bootstrap/mock_repos ]; then
    command -v apt-get >/dev/null ||
      die "Bazel is missing and this is not a Debian/Ubuntu system; install Bazel $(cat .bazelversion) and Debian's bazel-bootstrap-source mock repositories."
    say "installing Bazel (Debian bazel-bootstrap) ..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      bazel-bootstrap bazel-bootstrap-source >/dev/null
  fi
  # Debian's /usr/bin/bazel wrapper runs /usr/bin/bazel-<.bazelversion>, but
  # the package installs its 4.2.3 as /usr/bin/bazel-4.
  version="$(cat .bazelversion)"
  if [ -x /usr/bin/bazel-4 ] && [ ! -e "/usr/bin/bazel-$version" ]; then
    $sudo ln -s bazel-4 "/usr/bin/bazel-$version"
  fi
}

supported() {
  "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null
}

# Prints the interpreter to build the venv with: $PYTHON when set (a name on
# PATH, a path, or a pyenv version such as 3.13), else the first Python 3.10
# to 3.13 found.
find_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then
    for candidate in "$PYTHON" "$(pyenv root 2>/dev/null)/versions/$PYTHON/bin/python3" \
        $(pyenv root 2>/dev/null)/versions/"$PYTHON".*/bin/python3; do
      if command -v "$candidate" >/dev/null && supported "$candidate"; then
        command -v "$candidate"
        return
      fi
    done
    die "PYTHON=$PYTHON is not a Python 3.10 to 3.13 interpreter (give a command, a path, or a pyenv version such as 3.13)."
  fi
  for candidate in python3 python3.11 python3.12 python3.13 python3.10; do
    if command -v "$candidate" >/dev/null && supported "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  # pyenv installs versions it does not put on PATH.
  if command -v pyenv >/dev/null; then
    local version
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[0-3]\.' | sort -rV); do
      echo "$(pyenv root)/versions/$version/bin/python3"
      return
    done
  fi
  return 1
}

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# make_venv DIR REQUIREMENTS: (re)creates DIR when REQUIREMENTS changed.
make_venv() {
  local venv="$1" requirements="$2" stamp wanted python
  stamp="$venv/.requirements.sha256"
  wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
  python="$(find_python)" ||
    die "no Python 3.10, 3.11, 3.12 or 3.13 found; install one of them (e.g. apt-get install python3) and re-run."
  if [ -x "$venv/bin/python3" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] &&
     { [ -z "${PYTHON:-}" ] || [ "$(version_of "$venv/bin/python3")" = "$(version_of "$python")" ]; }; then
    return
  fi
  say "creating $venv with $("$python" --version) from $requirements (a few minutes) ..."
  # The stamp is written last, so an interrupted install is redone next time.
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # Some machines list package indexes that do not exist; pip warns once per
  # package about them, which buries real errors.
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check \
    -r "$requirements" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) ||
    die "pip could not install $requirements into $venv (see above); re-run tools/setup.sh."
  echo "$wanted" > "$stamp"
  # Make Bazel re-resolve the interpreter path (third_party/python/venv.bzl).
  bazel_sync_needed=1
}

bazel_sync_needed=0
install_bazel
make_venv "$ROOT/.venv" requirements.txt
if [ "${1:-}" = "--cuda" ]; then
  make_venv "$ROOT/.venv-cuda" requirements-cuda.txt
fi
if [ "$bazel_sync_needed" = 1 ] && [ -e "$ROOT/bazel-out" ]; then
  bazel sync --only=venv_cpu --only=venv_cuda >/dev/null 2>&1 ||
    die "could not refresh Bazel's view of the venv; run: bazel clean --expunge"
fi
