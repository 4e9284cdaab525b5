#!/usr/bin/env bash
# The accelerator checks of the fast-sampling issue as one prepared run (about 6 minutes):
# environment, sampling benchmark (sequential vs Jacobi, demo-size and scaled-up models) and the
# compiled train step (float32 tiny, bf16 scaled-up, with MFU). Every figure goes to $OUT.
#
# Made for the workplace's lent GPU machine (one H200; its image's python3 has jax, flax, optax,
# orbax-checkpoint, chex, absl, tqdm, but not ml-collections, and nothing can be fetched there).
# Here, once, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
# then call the device tool's run with carry [".whl"], timeout_s 540 and the command
#   bash experiments/device_check.sh
# Elsewhere (any machine with this repository's requirements): OUT=/tmp/checks bash experiments/device_check.sh
# PEAK_TFLOPS (default 989, H100/H200 dense bf16) sets the MFU denominator; QUICK=1 keeps only
# the small models (a dry run of the script on a CPU in about 2 minutes).
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  date -u
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PYTHON" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

status=0
sampling_models=demo,scaled
[ "${QUICK:-0}" = 1 ] && sampling_models=demo
timeout 300 "$PYTHON" -m experiments.bench_sampling --which=$sampling_models --frames=5 --repeats=3 \
  2>&1 | tee "$OUT/bench_sampling.txt" || status=1
timeout 180 "$PYTHON" -m experiments.bench_train --which=tiny --steps=10 \
  2>&1 | tee "$OUT/bench_train_f32.txt" || status=1
if [ "${QUICK:-0}" != 1 ]; then
  timeout 180 "$PYTHON" -m experiments.bench_train --which=scaled --dtype=bfloat16 --steps=10 \
    --peak_tflops="$PEAK_TFLOPS" 2>&1 | tee "$OUT/bench_train_bf16.txt" || status=1
fi
echo "device_check: $([ $status = 0 ] && echo ok || echo 'a step failed (see its file)')" | tee -a "$OUT/env.txt"
exit $status
