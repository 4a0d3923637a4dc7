#!/usr/bin/env bash
# Create or update ./.venv with the project installed (editable) and the given extras.
# Idempotent: a stamp of the install inputs skips pip when nothing changed.
# Usage: scripts/setup_env.sh [EXTRAS]   e.g. scripts/setup_env.sh dev,tflite
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-tflite}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
STAMP=".venv/.edge-compress-install-${EXTRAS//,/-}"
HASH="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "==> installing edge-compress[$EXTRAS] into .venv (torch pinned by constraints.txt)"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$EXTRAS]"
echo "$HASH" > "$STAMP"
