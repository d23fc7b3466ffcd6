#!/usr/bin/env bash
# Quick start command 2: installs what is missing, then runs every test.
# Extra arguments go to `bazel test` (e.g. tools/test.sh :mobilenet_v1_test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools/setup.sh
if [ $# -eq 0 ]; then
  set -- //...
fi
exec bazel test "$@"
