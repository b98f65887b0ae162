#!/bin/bash
# Everything this project checks on a lent GPU, in one command with a time limit per stage:
#   1. the compiled Triton kernels vs float64 (tests/test_triton_gpu.py, every dtype and mask kind);
#   2. the attention benchmark: every implementation side by side, one triton row per kernel config;
#   3. the train-step benchmark (MFU) of the ~300M VLM in bf16.
# Logs go to $OUT (default /tmp/gpu_session). Run from the repository root:
#   bash kernels/benchmarks/gpu_session.sh
# Environment: TRITON_CONFIGS, CASES, IMPLS (the benchmark's --triton_configs, --cases, --impls),
# MFU_ARGS (flags for experiments/benchmark_train.py), STAGES (subset of "tests bench mfu"),
# TESTS_TIMEOUT, BENCH_TIMEOUT, MFU_TIMEOUT (seconds per stage).
# Wheels the machine lacks (jax_triton, ml_collections) may be carried in .whl/; the repository is
# used in place (mmjax/kernels is linked to kernels/, as the editable install maps it).
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
STAGES=${STAGES:-"tests bench mfu"}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python3 -c "import mmjax.kernels" 2>/dev/null || ln -s ../kernels mmjax/kernels  # not pip-installed here
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, jax, jaxlib, triton, flax, optax; import jax_triton
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'triton',
      triton.__version__, 'jax_triton', jax_triton.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

if [[ $STAGES == *tests* ]]; then
  # Several processes compile kernels in parallel; none may grab most of the GPU's memory.
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${TESTS_TIMEOUT:-150} \
    python3 -m pytest -q -rA -p no:cacheprovider -n 8 tests/test_triton_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -45
fi
if [[ $STAGES == *bench* ]]; then
  timeout ${BENCH_TIMEOUT:-220} python3 kernels/benchmarks/attention_benchmark.py \
    --triton_configs="${TRITON_CONFIGS:-}" --cases="${CASES:-}" --impls="${IMPLS:-}" \
    2>&1 | tee "$OUT/attention_benchmark.log"
fi
if [[ $STAGES == *mfu* ]]; then
  timeout ${MFU_TIMEOUT:-150} python3 experiments/benchmark_train.py --config=experiments/configs/vlm_300m.py \
    ${MFU_ARGS:---config.batch_size=16 --config.model.remat=none --steps=5} 2>&1 | grep -v "^W1\|^I1" \
    | tee "$OUT/benchmark_train.log" | tail -12
fi
