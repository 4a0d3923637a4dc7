#!/usr/bin/env bash
# Prepare a Linux board for measurements: a venv with numpy and a runtime in the target's work dir.
# Thin wrapper around `edge-compress targets setup`; all arguments are passed through, e.g.
#   scripts/setup_target.sh pi5 --runtime both
#   scripts/setup_target.sh pi5 --wheel dist/onnxruntime-1.20.0-cp311-cp311-linux_aarch64.whl --pip-args "--no-index"
set -euo pipefail
if [ "$#" -lt 1 ]; then
  echo "usage: $0 TARGET [--runtime onnxruntime|litert|both|none] [--pip-args ARGS] [--wheel PATH] [--inventory PATH]" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
if command -v edge-compress >/dev/null 2>&1; then
  exec edge-compress targets setup "$@"
fi
exec "$here/.venv/bin/edge-compress" targets setup "$@"
