#!/usr/bin/env bash
# One prepared GPU run, under KERAS_BACKEND=jax: correctness of
# the attention paths, the attention benchmark against Keras core, and three
# examples, in under 5 minutes on one H200. See benchmarks/device_run.py.
#
#   bash benchmarks/device_run.sh [--smoke] [--out DIR] [--only STAGE...]
#
# --smoke: tiny sizes, fine on a CPU (the test suite runs it). DIR defaults
# to $OUT when set, else benchmarks/results/device-run-<date>/. It needs no
# network and no TensorFlow and installs nothing: keras may come from wheels
# installed elsewhere, e.g. PYTHONPATH=/tmp/site. $PYTHON picks the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
exec "${PYTHON:-python3}" -m benchmarks.device_run "$@"
