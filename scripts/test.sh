#!/usr/bin/env bash
# Set up .venv with the dev, tflite and lab extras, then run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k profiles).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh dev,tflite,lab
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
