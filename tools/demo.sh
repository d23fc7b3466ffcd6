#!/usr/bin/env bash
# Quick start command 1: installs what is missing, then runs the main job.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools/setup.sh
bazel build -c opt //:mobilenet_v1_table
./bazel-bin/mobilenet_v1_table --chart="$PWD/mobilenet_v1.png"
