#!/usr/bin/env bash
# The main job on the embedded default: LeNet-5 on scikit-learn digits (trained once, cached),
# compiled for the `phone` profile (mixed int8/int4 under the profile's budget, exported to ONNX and
# TFLite, parity-checked in the real runtimes), then benchmarked on this machine as the target.
# Re-running is fast: the trained weights, the data and the artifact are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh tflite
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m edge_compress.quickstart "$@"
