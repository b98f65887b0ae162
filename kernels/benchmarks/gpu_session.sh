#!/bin/bash
# Everything this project checks on a lent GPU, in one command of about 8 minutes, a time limit per stage:
#   tests  the compiled Triton kernels vs float64 (tests/test_triton_gpu.py: every dtype and mask kind,
#          both backward forms; each check in a child process of its own, 8 at a time);
#   sweep  kernels/benchmarks/tiling_sweep.py: each kernel alone over the tilings pre-screened on a CPU
#          (compiled for sm_90 without spills, every dot on wgmma: benchmarks/sm90_compile_screen.jsonl),
#          then the fastest tilings against cuDNN interleaved round by round; prints fwd / bwd / f+b
#          ratios as median [min, max], the error against cuDNN and the chosen tilings as JSON;
# and, when asked for in STAGES (they do not fit the 8 minutes together with the two above):
#   bench  the attention benchmark: every implementation side by side, one triton row per kernel config;
#   mfu    the train-step benchmark (MFU) of the ~300M VLM in bf16.
# Logs go to $OUT (default /tmp/gpu_session). Run from the repository root:
#   bash kernels/benchmarks/gpu_session.sh
# Environment: STAGES (default "tests sweep"; any of "tests sweep bench mfu"), SWEEP_ARGS (flags for
# tiling_sweep.py, e.g. --cases="causal 4k,cross" --max_candidates=3), TRITON_CONFIGS, CASES, IMPLS
# (attention_benchmark.py's --triton_configs, --cases, --impls), MFU_ARGS (flags for
# experiments/benchmark_train.py), TESTS_TIMEOUT, SWEEP_TIMEOUT, BENCH_TIMEOUT, MFU_TIMEOUT (seconds).
# Wheels the machine lacks (jax_triton, ml_collections) may be carried in .whl/; the repository is
# used in place (mmjax/kernels is linked to kernels/, as the editable install maps it).
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
STAGES=${STAGES:-"tests sweep"}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
python3 -c "import mmjax.kernels" 2>/dev/null || ln -s ../kernels mmjax/kernels  # not pip-installed here
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, jax, jaxlib, triton, flax, optax; import jax_triton
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'triton',
      triton.__version__, 'jax_triton', jax_triton.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

if [[ $STAGES == *tests* ]]; then
  # Each check runs in a child process (compiled-mode Triton whatever pytest collected); 8 at a time,
  # none may grab most of the GPU's memory.
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${TESTS_TIMEOUT:-210} \
    python3 -m pytest -q -rA -p no:cacheprovider -n 8 tests/test_triton_gpu.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -45
fi
if [[ $STAGES == *sweep* ]]; then
  eval "timeout ${SWEEP_TIMEOUT:-270} python3 kernels/benchmarks/tiling_sweep.py ${SWEEP_ARGS:-}" 2>&1 \
    | tee "$OUT/tiling_sweep.log" | grep -v " ms$"
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
